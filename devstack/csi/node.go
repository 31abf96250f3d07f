package main

// The node service. NodeStageVolume attaches the volume's image to a loop device and mounts its ext4 at the
// kubelet's staging path (growing the filesystem first, offline, when the image was expanded), unlocks an
// encrypted volume with the node-stage Secret's key, and NodePublishVolume bind-mounts the filesystem's data
// directory into the pod. The driver runs on the host next to the kubelet, so its mounts need no propagation.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// stagedVolume records where a volume is mounted on this node (removed at NodeUnstageVolume).
type stagedVolume struct {
	Path   string `json:"path"`
	Device string `json:"device"`
	KeyID  string `json:"key_id,omitempty"` // hex identifier of the fscrypt key added at staging
}

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.nodeID,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{topologyKey: d.nodeID}},
	}, nil
}

func nodeCap(t csi.NodeServiceCapability_RPC_Type) *csi.NodeServiceCapability {
	return &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}}
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{Capabilities: []*csi.NodeServiceCapability{
		nodeCap(csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME),
		nodeCap(csi.NodeServiceCapability_RPC_EXPAND_VOLUME),
		nodeCap(csi.NodeServiceCapability_RPC_GET_VOLUME_STATS),
	}}, nil
}

func (d *driver) NodeStageVolume(_ context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" || !filepath.IsAbs(staging) || req.GetVolumeCapability() == nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume id, absolute staging path and capability are required (got %q, %q)", id, staging)
	}
	if msg := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); msg != "" {
		return nil, status.Error(codes.InvalidArgument, msg)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	meta, err := d.loadVolume(id)
	if err != nil {
		return nil, err
	}
	var staged stagedVolume
	if err := readJSON(d.stagedState(id), &staged); err == nil {
		if mounted, _ := isMountPoint(staged.Path); mounted {
			if filepath.Clean(staged.Path) == filepath.Clean(staging) {
				return &csi.NodeStageVolumeResponse{}, nil // a retried call
			}
			return nil, status.Errorf(codes.FailedPrecondition, "volume %q is staged at %s already", id, staged.Path)
		}
		_ = os.Remove(d.stagedState(id)) // stale: the node restarted since
	}
	var key []byte
	if meta.Encrypted {
		if len(req.GetSecrets()) == 0 {
			return nil, status.Errorf(codes.FailedPrecondition,
				"volume %q is encrypted and NodeStageVolume got no key: the StorageClass must name the key Secret "+
					"(csi.storage.k8s.io/node-stage-secret-name and -namespace)", id)
		}
		if key, err = parseKey(req.GetSecrets()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "volume %q: %v", id, err)
		}
		defer clear(key)
	}
	image := d.volumeImage(id)
	if err := detachLoop(image); err != nil { // a loop device left from before a node restart, unmounted
		return nil, status.Errorf(codes.Internal, "detach stale loop device of %q: %v", id, err)
	}
	if err := d.growIfExpanded(id, image, meta.Capacity); err != nil {
		return nil, err
	}
	device, err := attachLoop(image)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "attach %s: %v", image, err)
	}
	undo := func() {
		_ = syscall.Unmount(staging, 0)
		_ = detachLoop(image)
	}
	if err := os.MkdirAll(staging, 0o750); err != nil {
		undo()
		return nil, status.Errorf(codes.Internal, "mkdir %s: %v", staging, err)
	}
	// read-only first: a refused key must leave the image as it was, superblock included
	if err := syscall.Mount(device, staging, "ext4", syscall.MS_RDONLY, ""); err != nil {
		undo()
		return nil, status.Errorf(codes.Internal, "mount %s (%s) on %s: %v", device, image, staging, err)
	}
	staged = stagedVolume{Path: staging, Device: device}
	if meta.Encrypted {
		keyID, err := unlock(device, staging, key, id)
		if err != nil {
			undo()
			return nil, err
		}
		staged.KeyID = hex.EncodeToString(keyID[:])
	} else {
		if err := remountWritable(device, staging); err != nil {
			undo()
			return nil, status.Errorf(codes.Internal, "volume %q: %v", id, err)
		}
		if err := ensureDataDir(filepath.Join(staging, dataDir)); err != nil {
			undo()
			return nil, status.Errorf(codes.Internal, "volume %q data directory: %v", id, err)
		}
	}
	if err := writeJSON(d.stagedState(id), staged); err != nil {
		undo()
		return nil, status.Errorf(codes.Internal, "staging state: %v", err)
	}
	logf("staged volume %s (%s on %s, encrypted %v)", id, device, staging, meta.Encrypted)
	return &csi.NodeStageVolumeResponse{}, nil
}

// growIfExpanded finishes an expansion offline: the image is longer than its filesystem (ControllerExpandVolume
// ran while the volume was mounted, or on a host without online resize) and nothing mounts it now.
func (d *driver) growIfExpanded(id, image string, capacity int64) error {
	size, err := fsSize(image)
	if err != nil {
		return status.Errorf(codes.Internal, "volume %q filesystem: %v", id, err)
	}
	if size+mib > capacity {
		return nil
	}
	if err := growOffline(image); err != nil {
		return status.Errorf(codes.Internal, "grow volume %q offline from %s to %s: %v", id, human(size), human(capacity), err)
	}
	logf("grew volume %s offline from %s to %s", id, human(size), human(capacity))
	return nil
}

func remountWritable(device, staging string) error {
	if err := syscall.Mount(device, staging, "ext4", syscall.MS_REMOUNT, ""); err != nil {
		return fmt.Errorf("remount %s read-write: %w", staging, err)
	}
	return nil
}

func ensureDataDir(dir string) error {
	if err := os.Mkdir(dir, 0o777); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if _, _, err := policyKey(dir); err != nil {
		return err
	}
	return os.Chmod(dir, 0o777) // pods run as non-root users; the umask would narrow it
}

// unlock adds key to the mounted filesystem's keyring and checks it is the key of the data directory's policy
// (setting the policy on the first staging). A wrong key is removed again and refused: nothing is changed.
func unlock(device, staging string, key []byte, id string) ([16]byte, error) {
	keyID, err := addKey(staging, key)
	if err != nil {
		return keyID, status.Errorf(codes.Internal, "volume %q: %v", id, err)
	}
	data := filepath.Join(staging, dataDir)
	policy, ok, err := policyKey(data)
	switch {
	case errors.Is(err, fs.ErrNotExist): // the first staging: the policy goes on a new, empty directory
		if err := remountWritable(device, staging); err != nil {
			return keyID, status.Errorf(codes.Internal, "volume %q: %v", id, err)
		}
		if err := os.Mkdir(data, 0o777); err != nil {
			return keyID, status.Errorf(codes.Internal, "volume %q: %v", id, err)
		}
		if err := setPolicy(data, keyID); err != nil {
			return keyID, status.Errorf(codes.Internal, "volume %q: %v", id, err)
		}
		if err := os.Chmod(data, 0o777); err != nil {
			return keyID, status.Errorf(codes.Internal, "volume %q: %v", id, err)
		}
		logf("volume %s: data encrypted with fscrypt v2 key %x", id, keyID)
		return keyID, nil
	case ok && policy == keyID:
		if err := remountWritable(device, staging); err != nil {
			return keyID, status.Errorf(codes.Internal, "volume %q: %v", id, err)
		}
		return keyID, nil
	case err != nil:
		return keyID, status.Errorf(codes.Internal, "volume %q: %v", id, err)
	case !ok:
		return keyID, status.Errorf(codes.FailedPrecondition, "volume %q is marked encrypted but its data has no encryption policy", id)
	case policy != keyID:
		if err := removeKey(staging, keyID); err != nil {
			logf("volume %s: removing the refused key: %v", id, err)
		}
		return keyID, status.Errorf(codes.PermissionDenied,
			"wrong encryption key for volume %q: the node-stage Secret's key has identifier %x, the volume's data "+
				"is encrypted with key %x; nothing was mounted or changed", id, keyID, policy)
	}
	return keyID, status.Errorf(codes.Internal, "volume %q: unreachable key state", id)
}

func (d *driver) NodeUnstageVolume(_ context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and staging path are required")
	}
	if !safeID.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "volume id %q is not safe", id)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var staged stagedVolume
	if err := readJSON(d.stagedState(id), &staged); err == nil && staged.KeyID != "" {
		var keyID [16]byte
		if raw, err := hex.DecodeString(staged.KeyID); err == nil && len(raw) == 16 {
			copy(keyID[:], raw)
			if err := removeKey(staging, keyID); err != nil {
				logf("volume %s: %v (the unmount drops the keyring anyway)", id, err)
			}
		}
	}
	if err := unmountAll(staging); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if err := detachLoop(d.volumeImage(id)); err != nil {
		return nil, status.Errorf(codes.Internal, "detach loop device of %q: %v", id, err)
	}
	if err := os.Remove(d.stagedState(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "staging state: %v", err)
	}
	logf("unstaged volume %s from %s", id, staging)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (d *driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	if id == "" || target == "" || !filepath.IsAbs(target) || staging == "" || req.GetVolumeCapability() == nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume id, absolute target path, staging path and capability are required (got %q, %q, %q)", id, target, staging)
	}
	if msg := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); msg != "" {
		return nil, status.Error(codes.InvalidArgument, msg)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.loadVolume(id); err != nil {
		return nil, err
	}
	var staged stagedVolume
	if err := readJSON(d.stagedState(id), &staged); err != nil || filepath.Clean(staged.Path) != filepath.Clean(staging) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q is not staged at %s", id, staging)
	}
	if mounted, err := isMountPoint(target); err != nil {
		return nil, status.Errorf(codes.Internal, "inspect %s: %v", target, err)
	} else if mounted {
		return &csi.NodePublishVolumeResponse{}, nil // published already (a retried call)
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "mkdir %s: %v", target, err)
	}
	source := filepath.Join(staging, dataDir)
	if err := syscall.Mount(source, target, "", syscall.MS_BIND, ""); err != nil {
		return nil, status.Errorf(codes.Internal, "bind mount %s on %s: %v", source, target, err)
	}
	if req.GetReadonly() {
		flags := uintptr(syscall.MS_BIND | syscall.MS_REMOUNT | syscall.MS_RDONLY)
		if err := syscall.Mount("", target, "", flags, ""); err != nil {
			_ = syscall.Unmount(target, 0)
			return nil, status.Errorf(codes.Internal, "remount %s read-only: %v", target, err)
		}
	}
	logf("published volume %s at %s (read-only %v)", id, target, req.GetReadonly())
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if req.GetVolumeId() == "" || target == "" || !filepath.IsAbs(target) {
		return nil, status.Errorf(codes.InvalidArgument, "volume id and absolute target path are required (got %q, %q)", req.GetVolumeId(), target)
	}
	if err := unmountAll(target); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "remove %s: %v", target, err)
	}
	logf("unpublished volume %s from %s", req.GetVolumeId(), target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func unmountAll(path string) error {
	for {
		mounted, err := isMountPoint(path)
		if err != nil {
			return fmt.Errorf("inspect %s: %w", path, err)
		}
		if !mounted {
			return nil
		}
		if err := syscall.Unmount(path, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
}

// NodeGetVolumeStats feeds the kubelet's kubelet_volume_stats_* metrics (the volume-filling alert reads them).
func (d *driver) NodeGetVolumeStats(_ context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" || path == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and volume path are required")
	}
	if _, err := d.loadVolume(id); err != nil {
		return nil, err
	}
	if mounted, err := isMountPoint(path); err != nil || !mounted {
		return nil, status.Errorf(codes.NotFound, "volume %q is not mounted at %s", id, path)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	bs := st.Bsize
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs,
			Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree),
			Used: int64(st.Files - st.Ffree)},
	}}, nil
}

// NodeExpandVolume grows a staged volume's filesystem into its (already longer) image. Where a mounted ext4
// cannot be resized (no CAP_SYS_RESOURCE) it answers FailedPrecondition, which the kubelet records as an
// in-use expansion error: the resize then happens offline at the next NodeStageVolume (the pod's restart), and
// the kubelet's NodeExpandVolume after that staging finds the filesystem at its size.
func (d *driver) NodeExpandVolume(_ context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" || path == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and volume path are required")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	meta, err := d.loadVolume(id)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume path %s: %v", path, err)
	}
	if required := req.GetCapacityRange().GetRequiredBytes(); required > meta.Capacity {
		return nil, status.Errorf(codes.OutOfRange, "volume %q: %s asked, the image is %s (ControllerExpandVolume first)",
			id, human(required), human(meta.Capacity))
	}
	var staged stagedVolume
	if err := readJSON(d.stagedState(id), &staged); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q is not staged on this node", id)
	}
	size, err := fsSize(staged.Device)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "volume %q filesystem: %v", id, err)
	}
	if size+mib > meta.Capacity {
		return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
	}
	if !d.onlineResize {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %q is mounted and this host cannot resize a mounted ext4 (the driver lacks CAP_SYS_RESOURCE): "+
				"its filesystem grows offline from %s to %s at the next NodeStageVolume; restart the pod using it",
			id, human(size), human(meta.Capacity))
	}
	if _, err := run("losetup", "-c", staged.Device); err != nil {
		return nil, status.Errorf(codes.Internal, "volume %q: %v", id, err)
	}
	if _, err := run("resize2fs", staged.Device); err != nil {
		return nil, status.Errorf(codes.Internal, "volume %q online resize: %v", id, err)
	}
	if size, err = fsSize(staged.Device); err != nil {
		return nil, status.Errorf(codes.Internal, "volume %q filesystem: %v", id, err)
	}
	logf("grew volume %s online to %s", id, human(size))
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// isMountPoint reads /proc/self/mountinfo: a bind mount of a directory on the same filesystem has the same
// device as its parent, so comparing st_dev (the usual shortcut) would miss it.
func isMountPoint(path string) (bool, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	clean := filepath.Clean(path)
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && unescapeMount(fields[4]) == clean {
			return true, nil
		}
	}
	return false, nil
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}
