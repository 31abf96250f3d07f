package main

// The CSI driver: volumes are directories under <root>/volumes, snapshots are tar files of a volume under
// <root>/snapshots, a restore unpacks one into a new volume. Node publishing is a bind mount; the driver runs
// on the host (the devstack node), so the kubelet sees its mounts without any propagation settings.

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var safeID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name   string
	nodeID string
	root   string
	mu     sync.Mutex // one mutation at a time: CreateVolume/CreateSnapshot are idempotent by name
}

// volumeMeta is stored next to each volume so a repeated CreateVolume can be checked for compatibility.
type volumeMeta struct {
	Name     string `json:"name"`
	Capacity int64  `json:"capacity"`
	Source   string `json:"source,omitempty"` // snapshot id the volume was restored from
}

type snapshotMeta struct {
	Name         string    `json:"name"`
	SourceVolume string    `json:"source_volume"`
	Size         int64     `json:"size"`
	Created      time.Time `json:"created"`
}

func (d *driver) volumeDir(id string) string   { return filepath.Join(d.root, "volumes", id) }
func (d *driver) volumeMeta(id string) string  { return filepath.Join(d.root, "volumes", id+".json") }
func (d *driver) snapshotTar(id string) string { return filepath.Join(d.root, "snapshots", id+".tar") }
func (d *driver) snapshotMeta(id string) string {
	return filepath.Join(d.root, "snapshots", id+".json")
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

// writeJSON writes atomically (temp file + rename) so a crash never leaves half a metadata file.
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ---- Identity ----------------------------------------------------------------------------------------------

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: version}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE,
		}},
	}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if _, err := os.Stat(d.root); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "data root %s: %v", d.root, err)
	}
	return &csi.ProbeResponse{}, nil
}

// ---- Controller --------------------------------------------------------------------------------------------

func controllerCap(t csi.ControllerServiceCapability_RPC_Type) *csi.ControllerServiceCapability {
	return &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
		Rpc: &csi.ControllerServiceCapability_RPC{Type: t},
	}}
}

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{
		controllerCap(csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME),
		controllerCap(csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT),
	}}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if _, err := os.Stat(d.volumeDir(req.GetVolumeId())); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %q: %v", req.GetVolumeId(), err)
	}
	for _, c := range req.GetVolumeCapabilities() {
		if c.GetBlock() != nil {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: "block volumes are not supported"}, nil
		}
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeCapabilities: req.GetVolumeCapabilities(),
	}}, nil
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	id := req.GetName()
	if !safeID.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "volume name %q is not a safe directory name", id)
	}
	for _, c := range req.GetVolumeCapabilities() {
		if c.GetBlock() != nil {
			return nil, status.Error(codes.InvalidArgument, "block volumes are not supported")
		}
	}
	capacity := req.GetCapacityRange().GetRequiredBytes()
	source := ""
	if snap := req.GetVolumeContentSource().GetSnapshot(); snap != nil {
		source = snap.GetSnapshotId()
	} else if req.GetVolumeContentSource() != nil {
		return nil, status.Error(codes.InvalidArgument, "only snapshots are supported as a volume content source")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var meta volumeMeta
	if err := readJSON(d.volumeMeta(id), &meta); err == nil {
		if meta.Capacity != capacity || meta.Source != source {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with other parameters", id)
		}
		return d.volumeResponse(id, meta), nil
	}
	dir := d.volumeDir(id)
	staging := dir + ".partial"
	if err := os.RemoveAll(staging); err != nil {
		return nil, status.Errorf(codes.Internal, "clean %s: %v", staging, err)
	}
	if err := os.MkdirAll(staging, 0o777); err != nil {
		return nil, status.Errorf(codes.Internal, "mkdir %s: %v", staging, err)
	}
	if err := os.Chmod(staging, 0o777); err != nil { // pods run as non-root users; the umask would narrow it
		return nil, status.Errorf(codes.Internal, "chmod %s: %v", staging, err)
	}
	if source != "" {
		if !safeID.MatchString(source) {
			return nil, status.Errorf(codes.InvalidArgument, "snapshot id %q is not safe", source)
		}
		if _, err := os.Stat(d.snapshotTar(source)); err != nil {
			return nil, status.Errorf(codes.NotFound, "snapshot %q: %v", source, err)
		}
		if err := untar(d.snapshotTar(source), staging); err != nil {
			return nil, status.Errorf(codes.Internal, "restore snapshot %q: %v", source, err)
		}
	}
	if err := os.Rename(staging, dir); err != nil {
		return nil, status.Errorf(codes.Internal, "rename %s: %v", staging, err)
	}
	meta = volumeMeta{Name: id, Capacity: capacity, Source: source}
	if err := writeJSON(d.volumeMeta(id), meta); err != nil {
		return nil, status.Errorf(codes.Internal, "volume metadata: %v", err)
	}
	logf("created volume %s (capacity %d, source %q)", id, capacity, source)
	return d.volumeResponse(id, meta), nil
}

func (d *driver) volumeResponse(id string, meta volumeMeta) *csi.CreateVolumeResponse {
	vol := &csi.Volume{
		VolumeId:           id,
		CapacityBytes:      meta.Capacity,
		AccessibleTopology: []*csi.Topology{{Segments: map[string]string{topologyKey: d.nodeID}}},
	}
	if meta.Source != "" {
		vol.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: meta.Source},
		}}
	}
	return &csi.CreateVolumeResponse{Volume: vol}
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if !safeID.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "volume id %q is not safe", id)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.RemoveAll(d.volumeDir(id)); err != nil {
		return nil, status.Errorf(codes.Internal, "delete volume %q: %v", id, err)
	}
	if err := os.Remove(d.volumeMeta(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "delete volume metadata %q: %v", id, err)
	}
	logf("deleted volume %s", id)
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	id, source := req.GetName(), req.GetSourceVolumeId()
	if !safeID.MatchString(id) || !safeID.MatchString(source) {
		return nil, status.Errorf(codes.InvalidArgument, "snapshot %q of volume %q: unsafe name", id, source)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var meta snapshotMeta
	if err := readJSON(d.snapshotMeta(id), &meta); err == nil {
		if meta.SourceVolume != source {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q exists for volume %q", id, meta.SourceVolume)
		}
		return snapshotResponse(id, meta), nil
	}
	if _, err := os.Stat(d.volumeDir(source)); err != nil {
		return nil, status.Errorf(codes.NotFound, "source volume %q: %v", source, err)
	}
	began := time.Now()
	size, err := tarDir(d.volumeDir(source), d.snapshotTar(id))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "snapshot %q: %v", id, err)
	}
	meta = snapshotMeta{Name: id, SourceVolume: source, Size: size, Created: began}
	if err := writeJSON(d.snapshotMeta(id), meta); err != nil {
		return nil, status.Errorf(codes.Internal, "snapshot metadata: %v", err)
	}
	logf("created snapshot %s of %s (%d bytes in %s)", id, source, size, time.Since(began))
	return snapshotResponse(id, meta), nil
}

func snapshotResponse(id string, meta snapshotMeta) *csi.CreateSnapshotResponse {
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{
		SnapshotId:     id,
		SourceVolumeId: meta.SourceVolume,
		SizeBytes:      meta.Size,
		CreationTime:   timestamppb.New(meta.Created),
		ReadyToUse:     true, // the copy is complete when CreateSnapshot returns
	}}
}

func (d *driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if !safeID.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "snapshot id %q is not safe", id)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, path := range []string{d.snapshotTar(id), d.snapshotMeta(id)} {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, status.Errorf(codes.Internal, "delete snapshot %q: %v", id, err)
		}
	}
	logf("deleted snapshot %s", id)
	return &csi.DeleteSnapshotResponse{}, nil
}

// ---- Node --------------------------------------------------------------------------------------------------

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.nodeID,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{topologyKey: d.nodeID}},
	}, nil
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil // no staging: publish is a single bind mount
}

func (d *driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if !safeID.MatchString(id) || target == "" || !filepath.IsAbs(target) {
		return nil, status.Errorf(codes.InvalidArgument, "volume %q target %q", id, target)
	}
	if req.GetVolumeCapability().GetBlock() != nil {
		return nil, status.Error(codes.InvalidArgument, "block volumes are not supported")
	}
	source := d.volumeDir(id)
	if _, err := os.Stat(source); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %q: %v", id, err)
	}
	if mounted, err := isMountPoint(target); err != nil {
		return nil, status.Errorf(codes.Internal, "inspect %s: %v", target, err)
	} else if mounted {
		return &csi.NodePublishVolumeResponse{}, nil // published already (a retried call)
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "mkdir %s: %v", target, err)
	}
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
	if target == "" || !filepath.IsAbs(target) {
		return nil, status.Errorf(codes.InvalidArgument, "target %q", target)
	}
	for {
		mounted, err := isMountPoint(target)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "inspect %s: %v", target, err)
		}
		if !mounted {
			break
		}
		if err := syscall.Unmount(target, 0); err != nil {
			return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "remove %s: %v", target, err)
	}
	logf("unpublished volume %s from %s", req.GetVolumeId(), target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
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

// ---- snapshot archives ----------------------------------------------------------------------------------

// tarDir writes the tree under dir to dest (via a temp file, renamed when complete); returns the bytes written.
func tarDir(dir, dest string) (int64, error) {
	tmp := dest + ".partial"
	out, err := os.Create(tmp)
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(out)
	walkErr := filepath.WalkDir(dir, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := entry.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if walkErr != nil {
		out.Close()
		return 0, walkErr
	}
	if err := tw.Close(); err != nil {
		out.Close()
		return 0, err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return 0, err
	}
	size, err := out.Seek(0, io.SeekCurrent)
	if err != nil {
		out.Close()
		return 0, err
	}
	if err := out.Close(); err != nil {
		return 0, err
	}
	return size, os.Rename(tmp, dest)
}

// untar unpacks src into dir, refusing entries that would land outside it.
func untar(src, dir string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tr := tar.NewReader(in)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if !strings.HasPrefix(target, filepath.Clean(dir)+string(os.PathSeparator)) {
			return fmt.Errorf("entry %q escapes the volume", hdr.Name)
		}
		mode := fs.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, mode); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, tr); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		default:
			continue // devices, fifos: not data a pipeline volume holds
		}
		if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeSymlink {
			if err := os.Chmod(target, mode); err != nil {
				return err
			}
			if err := os.Chtimes(target, hdr.ModTime, hdr.ModTime); err != nil {
				return err
			}
		}
	}
}
