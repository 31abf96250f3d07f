package main

// The controller's data path without a cluster: a snapshot copies the volume, a restore brings that copy back,
// the calls are idempotent by name, and unsafe names are refused. (The node's bind mounts need root and a
// kubelet; tests/test_volume_snapshots.py covers them on the devstack cluster.)

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func newTestDriver(t *testing.T) *driver {
	t.Helper()
	root := t.TempDir()
	for _, dir := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return &driver{name: "test.csi", nodeID: "node", root: root}
}

func mustWrite(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
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

func TestSnapshotCopiesDataAndRestoreBringsItBack(t *testing.T) {
	ctx := context.Background()
	d := newTestDriver(t)
	if _, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-a"}); err != nil {
		t.Fatal(err)
	}
	src := d.volumeDir("pvc-a")
	mustWrite(t, filepath.Join(src, "marker"), "before")
	mustWrite(t, filepath.Join(src, "nested", "deep", "file"), "nested")
	if err := os.Symlink("marker", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}

	snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: "pvc-a"})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.GetSnapshot().GetReadyToUse() || snap.GetSnapshot().GetSizeBytes() == 0 {
		t.Fatalf("snapshot not ready or empty: %v", snap)
	}
	again, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: "pvc-a"})
	if err != nil || !again.GetSnapshot().GetCreationTime().AsTime().Equal(snap.GetSnapshot().GetCreationTime().AsTime()) {
		t.Fatalf("a repeated CreateSnapshot must return the same snapshot: %v %v", again, err)
	}
	_, err = d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: "pvc-other"})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("same name, other source: want AlreadyExists, got %v", err)
	}

	mustWrite(t, filepath.Join(src, "marker"), "after") // the source changes after the snapshot
	mustWrite(t, filepath.Join(src, "later"), "later")

	source := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "snap-1"},
	}}
	vol, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-b", VolumeContentSource: source})
	if err != nil {
		t.Fatal(err)
	}
	if vol.GetVolume().GetContentSource().GetSnapshot().GetSnapshotId() != "snap-1" {
		t.Fatalf("content source not reported: %v", vol)
	}
	dst := d.volumeDir("pvc-b")
	if got := mustRead(t, filepath.Join(dst, "marker")); got != "before" {
		t.Fatalf("restored marker = %q, want the snapshot's %q", got, "before")
	}
	if got := mustRead(t, filepath.Join(dst, "nested", "deep", "file")); got != "nested" {
		t.Fatalf("restored nested file = %q", got)
	}
	if target, err := os.Readlink(filepath.Join(dst, "link")); err != nil || target != "marker" {
		t.Fatalf("symlink not restored: %q %v", target, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "later")); !os.IsNotExist(err) {
		t.Fatalf("a file written after the snapshot is in the restore: %v", err)
	}
	info, err := os.Stat(filepath.Join(dst, "marker"))
	if err != nil || info.Mode().Perm() != 0o640 {
		t.Fatalf("mode not restored: %v %v", info, err)
	}

	if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.snapshotTar("snap-1")); !os.IsNotExist(err) {
		t.Fatalf("snapshot data left after DeleteSnapshot: %v", err)
	}
	if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap-1"}); err != nil {
		t.Fatalf("DeleteSnapshot must be idempotent: %v", err)
	}
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-c", VolumeContentSource: source})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("restore from a deleted snapshot: want NotFound, got %v", err)
	}
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "pvc-b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatalf("volume left after DeleteVolume: %v", err)
	}
}

func TestUnsafeNamesAreRefused(t *testing.T) {
	ctx := context.Background()
	d := newTestDriver(t)
	for _, name := range []string{"../escape", "a/b", "", ".hidden"} {
		if _, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("CreateVolume(%q): want InvalidArgument, got %v", name, err)
		}
		req := &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: "v"}
		if _, err := d.CreateSnapshot(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("CreateSnapshot(%q): want InvalidArgument, got %v", name, err)
		}
	}
}
