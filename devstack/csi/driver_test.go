package main

// The driver's data path on real loop devices and ext4 (as root, like the driver itself; skipped otherwise):
// capacity enforced by the filesystem (ENOSPC), a claim larger than the disk refused, fscrypt v2 encryption
// (no plaintext in the image, a missing or wrong key refused with the data untouched), offline expansion with
// the data intact, a refused shrink, snapshots restored into a larger volume. The kubelet's side is covered by
// tests/test_csi_driver.py on the devstack cluster, and csi-sanity runs the conformance specs.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var mountCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

const testKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
const otherKey = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

func newTestDriver(t *testing.T) *driver {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices and mounts need root")
	}
	root := t.TempDir()
	for _, dir := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return &driver{name: "test.csi", nodeID: "node", root: root, onlineResize: false}
}

func create(t *testing.T, d *driver, name string, size int64, params map[string]string, snap string) {
	t.Helper()
	req := &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: params}
	if snap != "" {
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap}}}
	}
	if _, err := d.CreateVolume(context.Background(), req); err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
}

// mount stages and publishes volume id; returns the published path and a cleanup that undoes both.
func mount(t *testing.T, d *driver, id string, secrets map[string]string) (string, func()) {
	t.Helper()
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	ctx := context.Background()
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: mountCap, Secrets: secrets}); err != nil {
		t.Fatalf("NodeStageVolume %s: %v", id, err)
	}
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: mountCap}); err != nil {
		t.Fatalf("NodePublishVolume %s: %v", id, err)
	}
	done := false
	cleanup := func() {
		if done {
			return
		}
		done = true
		if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Errorf("NodeUnpublishVolume: %v", err)
		}
		if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Errorf("NodeUnstageVolume: %v", err)
		}
	}
	t.Cleanup(cleanup)
	return target, cleanup
}

func stageErr(d *driver, id string, secrets map[string]string, t *testing.T) error {
	staging := filepath.Join(t.TempDir(), "staging")
	_, err := d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id,
		StagingTargetPath: staging, VolumeCapability: mountCap, Secrets: secrets})
	if err == nil {
		_, _ = d.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	}
	return err
}

func mustWrite(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o640); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestWritePastCapacityGetsENOSPC(t *testing.T) {
	d := newTestDriver(t)
	create(t, d, "pvc-small", 16*mib, nil, "")
	target, _ := mount(t, d, "pvc-small", nil)
	f, err := os.Create(filepath.Join(target, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte("x"), int(mib))
	var written int64
	for written < 64*mib {
		n, err := f.Write(chunk)
		written += int64(n)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("write failed with %v, want ENOSPC", err)
			}
			if written > 16*mib || written < 8*mib {
				t.Fatalf("ENOSPC after %d bytes in a 16 MiB volume", written)
			}
			t.Logf("ENOSPC after %d bytes in a 16 MiB volume", written)
			return
		}
	}
	t.Fatalf("wrote %d bytes into a 16 MiB volume without ENOSPC", written)
}

func TestClaimLargerThanTheNodeIsRefused(t *testing.T) {
	d := newTestDriver(t)
	free, err := freeBytes(d.root)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-huge",
		VolumeCapabilities: []*csi.VolumeCapability{mountCap}, CapacityRange: &csi.CapacityRange{RequiredBytes: free + 10*gib}})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "exceeds the free space") {
		t.Fatalf("want ResourceExhausted naming the free space, got %v", err)
	}
	if _, statErr := os.Stat(d.volumeImage("pvc-huge")); !os.IsNotExist(statErr) {
		t.Fatalf("a refused volume left an image: %v", statErr)
	}
	t.Log(err)
}

func TestEncryptedVolumeHasNoPlaintextAndRefusesAWrongOrMissingKey(t *testing.T) {
	d := newTestDriver(t)
	create(t, d, "pvc-enc", 32*mib, map[string]string{"encrypted": "true"}, "")
	record := "eventpipe-secret-record-5f0c2e"
	target, unmount := mount(t, d, "pvc-enc", map[string]string{"key": testKey})
	mustWrite(t, filepath.Join(target, "record-file"), strings.Repeat(record+"\n", 1000))
	unmount()

	image, err := os.ReadFile(d.volumeImage("pvc-enc"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(image, []byte(record)) || bytes.Contains(image, []byte("record-file")) {
		t.Fatal("the image holds the record or its file name in plaintext")
	}
	if err := stageErr(d, "pvc-enc", map[string]string{"key": otherKey}, t); status.Code(err) != codes.PermissionDenied ||
		!strings.Contains(err.Error(), "wrong encryption key") {
		t.Fatalf("wrong key: want PermissionDenied, got %v", err)
	}
	if err := stageErr(d, "pvc-enc", nil, t); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("no key: want FailedPrecondition, got %v", err)
	}
	if err := stageErr(d, "pvc-enc", map[string]string{"key": "short"}, t); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("malformed key: want InvalidArgument, got %v", err)
	}
	after, err := os.ReadFile(d.volumeImage("pvc-enc"))
	if err != nil || !bytes.Equal(image, after) {
		t.Fatalf("refused keys changed the image (%v)", err)
	}
	target, _ = mount(t, d, "pvc-enc", map[string]string{"key": testKey})
	if got := mustRead(t, filepath.Join(target, "record-file")); !strings.HasPrefix(got, record) {
		t.Fatalf("with the right key the record reads %q", got[:40])
	}
}

func TestOfflineExpansionKeepsDataAndShrinkIsRefused(t *testing.T) {
	d := newTestDriver(t)
	ctx := context.Background()
	create(t, d, "pvc-grow", 32*mib, nil, "")
	target, unmount := mount(t, d, "pvc-grow", nil)
	mustWrite(t, filepath.Join(target, "marker"), "kept")
	resp, err := d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-grow",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 96 * mib}})
	if err != nil || resp.GetCapacityBytes() != 96*mib || !resp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume: %v %v", resp, err)
	}
	_, err = d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "pvc-grow", VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 96 * mib}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "restart the pod") {
		t.Fatalf("online NodeExpandVolume without CAP_SYS_RESOURCE: want FailedPrecondition, got %v", err)
	}
	unmount() // the pod restarts: unstage, then stage grows the filesystem offline
	target, _ = mount(t, d, "pvc-grow", nil)
	var st syscall.Statfs_t
	if err := syscall.Statfs(target, &st); err != nil {
		t.Fatal(err)
	}
	if total := int64(st.Blocks) * st.Bsize; total < 80*mib {
		t.Fatalf("after restaging the filesystem is %d bytes, want about 96 MiB", total)
	}
	if got := mustRead(t, filepath.Join(target, "marker")); got != "kept" {
		t.Fatalf("marker after expansion = %q", got)
	}
	resp2, err := d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "pvc-grow", VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 96 * mib}})
	if err != nil || resp2.GetCapacityBytes() < 95*mib {
		t.Fatalf("NodeExpandVolume after the offline grow: %v %v", resp2, err)
	}
	_, err = d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-grow",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 * mib}})
	if status.Code(err) != codes.OutOfRange || !strings.Contains(err.Error(), "shrinking") {
		t.Fatalf("shrink: want OutOfRange, got %v", err)
	}
}

func TestSnapshotRestoresIntoALargerVolume(t *testing.T) {
	d := newTestDriver(t)
	ctx := context.Background()
	create(t, d, "pvc-a", 32*mib, nil, "")
	target, _ := mount(t, d, "pvc-a", nil)
	mustWrite(t, filepath.Join(target, "marker"), "before")
	snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: "pvc-a"})
	if err != nil || !snap.GetSnapshot().GetReadyToUse() || snap.GetSnapshot().GetSizeBytes() != 32*mib {
		t.Fatalf("CreateSnapshot of a mounted volume: %v %v", snap, err)
	}
	if _, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: "pvc-other"}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("same name, other source: want AlreadyExists, got %v", err)
	}
	mustWrite(t, filepath.Join(target, "marker"), "after")

	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-tiny", VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * mib}, VolumeContentSource: &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "snap-1"}}}})
	if status.Code(err) != codes.OutOfRange {
		t.Fatalf("restore into a smaller volume: want OutOfRange, got %v", err)
	}
	create(t, d, "pvc-b", 128*mib, nil, "snap-1")
	restored, _ := mount(t, d, "pvc-b", nil)
	if got := mustRead(t, filepath.Join(restored, "marker")); got != "before" {
		t.Fatalf("restored marker = %q, want the snapshot's", got)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(restored, &st); err != nil || int64(st.Blocks)*st.Bsize < 100*mib {
		t.Fatalf("restored filesystem is %d bytes, want about 128 MiB (%v)", int64(st.Blocks)*st.Bsize, err)
	}
	if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap-1"}); err != nil {
		t.Fatalf("DeleteSnapshot must be idempotent: %v", err)
	}
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "pvc-b"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("deleting a staged volume: want FailedPrecondition, got %v", err)
	}
}

func TestUnsafeNamesAreRefused(t *testing.T) {
	d := &driver{name: "test.csi", nodeID: "node", root: t.TempDir()}
	ctx := context.Background()
	for _, name := range []string{"../escape", "a/b", ".hidden"} {
		req := &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{mountCap}}
		if _, err := d.CreateVolume(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("CreateVolume(%q): want InvalidArgument, got %v", name, err)
		}
		snap := &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: "v"}
		if _, err := d.CreateSnapshot(ctx, snap); status.Code(err) != codes.InvalidArgument {
			t.Errorf("CreateSnapshot(%q): want InvalidArgument, got %v", name, err)
		}
	}
}
