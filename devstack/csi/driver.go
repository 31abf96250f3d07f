package main

// The CSI driver's identity and controller. A volume is <root>/volumes/<id>.img, a sparse ext4 image of the
// requested size (image.go); a snapshot is a sparse copy of that image under <root>/snapshots, taken with the
// filesystem frozen when it is mounted; a restore copies it back and grows it when the claim is larger.
// Encrypted volumes stay encrypted in snapshots: the image holds only ciphertext (fscrypt.go). A cloud snapshot
// leaves the node for S3 and is restored from there on any node given the store's Secret (cloud.go).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var safeID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

const paramEncrypted = "encrypted" // StorageClass parameter: "true" puts an fscrypt v2 policy on the volume

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name         string
	nodeID       string
	root         string
	onlineResize bool       // CAP_SYS_RESOURCE held: a mounted ext4 can be grown in place
	mu           sync.Mutex // one mutation at a time: every call is idempotent by name
	uploading    sync.Map   // snapshot ids whose cloud upload runs outside mu
}

// volumeMeta is stored next to each image so a repeated CreateVolume can be checked for compatibility.
type volumeMeta struct {
	Name      string `json:"name"`
	Capacity  int64  `json:"capacity"`
	Source    string `json:"source,omitempty"` // snapshot id the volume was restored from
	Encrypted bool   `json:"encrypted,omitempty"`
}

type snapshotMeta struct {
	Name         string        `json:"name"`
	SourceVolume string        `json:"source_volume"`
	Size         int64         `json:"size"`       // the source's capacity: the smallest volume it restores into
	DataBytes    int64         `json:"data_bytes"` // bytes really copied (the image is sparse)
	Encrypted    bool          `json:"encrypted,omitempty"`
	Created      time.Time     `json:"created"`
	Cloud        string        `json:"cloud,omitempty"`    // s3://bucket/prefix it is shipped to; no node copy once uploaded
	Uploaded     bool          `json:"uploaded,omitempty"` // the cloud manifest is committed
	Upload       *uploadReport `json:"upload,omitempty"`
}

func (d *driver) volumeImage(id string) string { return filepath.Join(d.root, "volumes", id+".img") }
func (d *driver) volumeMeta(id string) string  { return filepath.Join(d.root, "volumes", id+".json") }
func (d *driver) stagedState(id string) string {
	return filepath.Join(d.root, "volumes", id+".staged.json")
}
func (d *driver) snapshotImage(id string) string {
	return filepath.Join(d.root, "snapshots", id+".img")
}
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

// staged returns where the volume is mounted on this node; a record whose mount is gone (the node restarted)
// does not count.
func (d *driver) staged(id string) (stagedVolume, bool) {
	var staged stagedVolume
	if err := readJSON(d.stagedState(id), &staged); err != nil {
		return staged, false
	}
	mounted, err := isMountPoint(staged.Path)
	return staged, err == nil && mounted
}

func (d *driver) loadVolume(id string) (volumeMeta, error) {
	var meta volumeMeta
	if !safeID.MatchString(id) {
		return meta, status.Errorf(codes.InvalidArgument, "volume id %q is not safe", id)
	}
	if err := readJSON(d.volumeMeta(id), &meta); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return meta, status.Errorf(codes.NotFound, "volume %q does not exist", id)
		}
		return meta, status.Errorf(codes.Internal, "volume %q metadata: %v", id, err)
	}
	return meta, nil
}

// human prints a byte count the way claims are written (Mi/Gi) next to the exact number.
func human(n int64) string {
	switch {
	case n >= gib && n%gib == 0:
		return fmt.Sprintf("%dGi (%d bytes)", n/gib, n)
	case n >= gib:
		return fmt.Sprintf("%.1fGi (%d bytes)", float64(n)/float64(gib), n)
	default:
		return fmt.Sprintf("%.0fMi (%d bytes)", float64(n)/float64(mib), n)
	}
}

// capacityFor turns a capacity range into the image size: the required bytes rounded up to whole MiB (at least
// minCapacity, defaultSize when nothing is asked), refused with OutOfRange when the limit does not allow it.
func capacityFor(r *csi.CapacityRange) (int64, error) {
	required, limit := r.GetRequiredBytes(), r.GetLimitBytes()
	if required < 0 || limit < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "negative capacity range %v", r)
	}
	if limit > 0 && required > limit {
		return 0, status.Errorf(codes.InvalidArgument, "required %d bytes exceed the limit %d", required, limit)
	}
	size := required
	if size == 0 {
		size = defaultSize
		if limit > 0 && limit < size {
			size = limit
		}
	}
	size = max((size+mib-1)/mib*mib, minCapacity)
	if limit > 0 && size > limit {
		return 0, status.Errorf(codes.OutOfRange, "the smallest volume this driver makes for %d..%d bytes is %s",
			required, limit, human(size))
	}
	return size, nil
}

// checkFree refuses a size the node's disk cannot hold (images are sparse, so this is checked, not reserved).
func (d *driver) checkFree(size int64, what string) error {
	free, err := freeBytes(d.root)
	if err != nil {
		return status.Errorf(codes.Internal, "free space of %s: %v", d.root, err)
	}
	if size > free {
		return status.Errorf(codes.ResourceExhausted,
			"%s of %s exceeds the free space on node %s: %s available in %s",
			what, human(size), d.nodeID, human(free), d.root)
	}
	return nil
}

// ---- Identity ----------------------------------------------------------------------------------------------

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: version}, nil
}

// GetPluginCapabilities: expansion is ONLINE only where a mounted ext4 can really be resized here; otherwise
// OFFLINE (the filesystem grows at the next NodeStageVolume, i.e. when the pod restarts).
func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	expansion := csi.PluginCapability_VolumeExpansion_OFFLINE
	if d.onlineResize {
		expansion = csi.PluginCapability_VolumeExpansion_ONLINE
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE,
		}}},
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS,
		}}},
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
			Type: expansion,
		}}},
	}}, nil
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
		controllerCap(csi.ControllerServiceCapability_RPC_EXPAND_VOLUME),
		controllerCap(csi.ControllerServiceCapability_RPC_GET_CAPACITY),
		controllerCap(csi.ControllerServiceCapability_RPC_LIST_VOLUMES),
		controllerCap(csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS),
		controllerCap(csi.ControllerServiceCapability_RPC_GET_SNAPSHOT),
	}}, nil
}

// GetCapacity is the node's free space: images are sparse, so that is what a new volume may still claim.
func (d *driver) GetCapacity(context.Context, *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	free, err := freeBytes(d.root)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "free space of %s: %v", d.root, err)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: free, MinimumVolumeSize: wrapperspb.Int64(minCapacity)}, nil
}

// checkCapabilities refuses what the driver cannot do: raw block, and multi-node access to a node-local image.
func checkCapabilities(caps []*csi.VolumeCapability) string {
	for _, c := range caps {
		if c.GetBlock() != nil {
			return "block volumes are not supported"
		}
		if c.GetMount() == nil {
			return "a volume capability must have an access type (mount)"
		}
		if fsType := c.GetMount().GetFsType(); fsType != "" && fsType != "ext4" {
			return fmt.Sprintf("fsType %q is not supported (volumes are ext4)", fsType)
		}
		switch c.GetAccessMode().GetMode() {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
		default:
			return fmt.Sprintf("access mode %s is not supported (one node)", c.GetAccessMode().GetMode())
		}
	}
	return ""
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" || len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume id and volume capabilities are required")
	}
	if _, err := d.loadVolume(req.GetVolumeId()); err != nil {
		return nil, err
	}
	if msg := checkCapabilities(req.GetVolumeCapabilities()); msg != "" {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: msg}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

func (d *driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	id := req.GetName()
	if !safeID.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "volume name %q is not a safe file name", id)
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	if msg := checkCapabilities(req.GetVolumeCapabilities()); msg != "" {
		return nil, status.Error(codes.InvalidArgument, msg)
	}
	capacity, err := capacityFor(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	encrypted := false
	if value, ok := req.GetParameters()[paramEncrypted]; ok {
		if encrypted, err = strconv.ParseBool(value); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "parameter %s=%q is not a boolean", paramEncrypted, value)
		}
	}
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
		if meta.Capacity != capacity || meta.Source != source || meta.Encrypted != encrypted {
			return nil, status.Errorf(codes.AlreadyExists,
				"volume %q exists with other parameters (capacity %d, source %q, encrypted %v)",
				id, meta.Capacity, meta.Source, meta.Encrypted)
		}
		return d.volumeResponse(id, meta), nil
	}
	image := d.volumeImage(id)
	partial := image + ".partial"
	if err := os.Remove(partial); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "clean %s: %v", partial, err)
	}
	if source != "" {
		if err := d.restoreInto(ctx, partial, source, capacity, encrypted, req.GetSecrets()); err != nil {
			os.Remove(partial)
			return nil, err
		}
	} else {
		if err := d.checkFree(capacity, "a volume"); err != nil {
			return nil, err
		}
		if err := makeImage(partial, capacity); err != nil {
			os.Remove(partial)
			return nil, status.Errorf(codes.Internal, "make the volume image: %v", err)
		}
	}
	if err := os.Rename(partial, image); err != nil {
		return nil, status.Errorf(codes.Internal, "rename %s: %v", partial, err)
	}
	meta = volumeMeta{Name: id, Capacity: capacity, Source: source, Encrypted: encrypted}
	if err := writeJSON(d.volumeMeta(id), meta); err != nil {
		return nil, status.Errorf(codes.Internal, "volume metadata: %v", err)
	}
	logf("created volume %s (%s, encrypted %v, source %q)", id, human(capacity), encrypted, source)
	return d.volumeResponse(id, meta), nil
}

// restoreInto copies snapshot source to image and grows it (offline: nothing mounts it yet) to capacity. A
// snapshot this node does not hold, or holds only in the cloud, comes from S3 when the request carries its secret.
func (d *driver) restoreInto(ctx context.Context, image, source string, capacity int64, encrypted bool,
	secrets map[string]string) error {
	if !safeID.MatchString(source) {
		return status.Errorf(codes.InvalidArgument, "snapshot id %q is not safe", source)
	}
	var snap snapshotMeta
	if err := readJSON(d.snapshotMeta(source), &snap); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return status.Errorf(codes.Internal, "snapshot %q metadata: %v", source, err)
		}
		if len(secrets) == 0 {
			return status.Errorf(codes.NotFound, "snapshot %q does not exist", source)
		}
		snap.Cloud = "s3"
	}
	if snap.Cloud != "" {
		return d.restoreFromCloud(ctx, image, source, capacity, encrypted, secrets)
	}
	if err := fitsRestore(source, snap.Size, snap.Encrypted, capacity, encrypted); err != nil {
		return err
	}
	if err := d.checkFree(snap.DataBytes+(capacity-snap.Size), "restoring snapshot "+source); err != nil {
		return err
	}
	if _, err := sparseCopy(d.snapshotImage(source), image); err != nil {
		return status.Errorf(codes.Internal, "copy snapshot %q: %v", source, err)
	}
	return growRestored(image, snap.Size, capacity)
}

// restoreFromCloud rebuilds snapshot source from S3 into image, chunk digests checked, then grows it.
func (d *driver) restoreFromCloud(ctx context.Context, image, source string, capacity int64, encrypted bool,
	secrets map[string]string) error {
	target, err := targetFrom(secrets, "restoring cloud snapshot "+source)
	if err != nil {
		return err
	}
	m, err := target.manifest(ctx, source)
	if err != nil {
		if notFound(err) {
			return status.Errorf(codes.NotFound, "snapshot %q does not exist on this node or in %s", source, target)
		}
		return s3Status(err, "snapshot %q: read its manifest in %s", source, target)
	}
	if err := fitsRestore(source, m.Size, m.Encrypted, capacity, encrypted); err != nil {
		return err
	}
	var stored int64
	for _, digest := range m.Chunks {
		if digest != "" {
			stored += m.ChunkSize
		}
	}
	if err := d.checkFree(stored+(capacity-m.Size), "restoring cloud snapshot "+source); err != nil {
		return err
	}
	began := time.Now()
	if err := target.download(ctx, source, m, image); err != nil {
		return err
	}
	logf("restored cloud snapshot %s from %s (%d chunks, %s stored) in %s", source, target, len(m.Chunks),
		human(stored), time.Since(began))
	return growRestored(image, m.Size, capacity)
}

// fitsRestore refuses a restore of snapshot source (size bytes, encrypted or not) into a smaller volume or
// into a class of the other encryption, wherever the snapshot is kept.
func fitsRestore(source string, size int64, snapEncrypted bool, capacity int64, encrypted bool) error {
	if capacity < size {
		return status.Errorf(codes.OutOfRange, "a volume of %s cannot hold snapshot %q of %s",
			human(capacity), source, human(size))
	}
	if snapEncrypted != encrypted {
		return status.Errorf(codes.InvalidArgument, "snapshot %q is encrypted=%v; the class asks encrypted=%v",
			source, snapEncrypted, encrypted)
	}
	return nil
}

// growRestored grows a restored image of size to capacity (offline: nothing mounts it yet).
func growRestored(image string, size, capacity int64) error {
	if capacity > size {
		if err := os.Truncate(image, capacity); err != nil {
			return status.Errorf(codes.Internal, "grow restored image: %v", err)
		}
		if err := growOffline(image); err != nil {
			return status.Errorf(codes.Internal, "grow restored filesystem to %s: %v", human(capacity), err)
		}
	}
	return nil
}

func (d *driver) volumeResponse(id string, meta volumeMeta) *csi.CreateVolumeResponse {
	vol := &csi.Volume{
		VolumeId:           id,
		CapacityBytes:      meta.Capacity,
		VolumeContext:      map[string]string{paramEncrypted: strconv.FormatBool(meta.Encrypted)},
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
	if staged, ok := d.staged(id); ok {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q is still staged at %s", id, staged.Path)
	}
	_ = detachLoop(d.volumeImage(id)) // a loop device left unmounted by a node restart
	for _, path := range []string{d.volumeImage(id), d.volumeMeta(id), d.stagedState(id)} {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, status.Errorf(codes.Internal, "delete volume %q: %v", id, err)
		}
	}
	logf("deleted volume %s", id)
	return &csi.DeleteVolumeResponse{}, nil
}

// ControllerExpandVolume makes the image longer; the filesystem grows on the node (NodeExpandVolume, or at the
// next NodeStageVolume where the host cannot resize a mounted ext4). Lengthening the file is safe while it is
// mounted: the loop device keeps its size until `losetup -c`. Shrinking is refused: ext4 data would be cut.
func (d *driver) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" || req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume id and capacity range are required")
	}
	size, err := capacityFor(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	meta, err := d.loadVolume(id)
	if err != nil {
		return nil, err
	}
	if size < meta.Capacity {
		return nil, status.Errorf(codes.OutOfRange, "volume %q is %s; shrinking it to %s is not supported",
			id, human(meta.Capacity), human(size))
	}
	if size > meta.Capacity {
		if err := d.checkFree(size-meta.Capacity, fmt.Sprintf("growing volume %s to %s by", id, human(size))); err != nil {
			return nil, err
		}
		if err := os.Truncate(d.volumeImage(id), size); err != nil {
			return nil, status.Errorf(codes.Internal, "grow image of %q: %v", id, err)
		}
		logf("expanded image of %s from %s to %s", id, human(meta.Capacity), human(size))
		meta.Capacity = size
		if err := writeJSON(d.volumeMeta(id), meta); err != nil {
			return nil, status.Errorf(codes.Internal, "volume metadata: %v", err)
		}
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: meta.Capacity, NodeExpansionRequired: true}, nil
}

func (d *driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	id, source := req.GetName(), req.GetSourceVolumeId()
	if id == "" || source == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot name and source volume id are required")
	}
	if !safeID.MatchString(id) || !safeID.MatchString(source) {
		return nil, status.Errorf(codes.InvalidArgument, "snapshot %q of volume %q: unsafe name", id, source)
	}
	cloud, err := wantsCloud(req.GetParameters())
	if err != nil {
		return nil, err
	}
	var target cloudTarget
	if cloud {
		if target, err = targetFrom(req.GetSecrets(), "cloud snapshot "+id); err != nil {
			return nil, err // before anything is copied
		}
	}
	meta, err := d.localSnapshot(id, source, target, cloud)
	if err != nil || !cloud || meta.Uploaded {
		if err != nil {
			return nil, err
		}
		return snapshotResponse(id, meta), nil
	}
	return d.shipSnapshot(ctx, id, meta, target)
}

// localSnapshot takes (or finds) the frozen node copy of source; a cloud snapshot's copy waits for its upload.
func (d *driver) localSnapshot(id, source string, target cloudTarget, cloud bool) (snapshotMeta, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var meta snapshotMeta
	if err := readJSON(d.snapshotMeta(id), &meta); err == nil {
		if meta.SourceVolume != source {
			return meta, status.Errorf(codes.AlreadyExists, "snapshot %q exists for volume %q", id, meta.SourceVolume)
		}
		if cloud && meta.Cloud != target.String() {
			return meta, status.Errorf(codes.AlreadyExists, "snapshot %q exists with cloud target %q, not %q",
				id, meta.Cloud, target.String())
		}
		return meta, nil // done, or a cut upload that resumes from the same frozen copy
	}
	vol, err := d.loadVolume(source)
	if err != nil {
		return meta, err
	}
	image := d.volumeImage(source)
	used, err := allocatedBytes(image)
	if err != nil {
		return meta, status.Errorf(codes.Internal, "size of %s: %v", image, err)
	}
	if err := d.checkFree(used, "a snapshot"); err != nil {
		return meta, err
	}
	began := time.Now()
	partial := d.snapshotImage(id) + ".partial"
	var copied int64
	copyImage := func() (err error) { copied, err = sparseCopy(image, partial); return err }
	if staged, ok := d.staged(source); ok {
		err = frozen(staged.Path, copyImage) // mounted: a frozen ext4 is clean and consistent on disk
	} else {
		err = copyImage()
	}
	if err != nil {
		os.Remove(partial)
		return meta, status.Errorf(codes.Internal, "snapshot %q: %v", id, err)
	}
	if err := os.Rename(partial, d.snapshotImage(id)); err != nil {
		return meta, status.Errorf(codes.Internal, "snapshot %q: %v", id, err)
	}
	meta = snapshotMeta{Name: id, SourceVolume: source, Size: vol.Capacity, DataBytes: copied,
		Encrypted: vol.Encrypted, Created: began}
	if cloud {
		meta.Cloud = target.String()
	}
	if err := writeJSON(d.snapshotMeta(id), meta); err != nil {
		return meta, status.Errorf(codes.Internal, "snapshot metadata: %v", err)
	}
	logf("created snapshot %s of %s (%d data bytes in %s)", id, source, copied, time.Since(began))
	return meta, nil
}

// shipSnapshot uploads the node copy of id outside the driver lock (mounts go on meanwhile), commits the
// manifest, and drops the node copy.
func (d *driver) shipSnapshot(ctx context.Context, id string, meta snapshotMeta, target cloudTarget) (*csi.CreateSnapshotResponse, error) {
	if _, busy := d.uploading.LoadOrStore(id, true); busy {
		return nil, status.Errorf(codes.Aborted, "snapshot %q is being uploaded to %s", id, target)
	}
	defer d.uploading.Delete(id)
	began := time.Now()
	report, err := target.upload(ctx, id, d.snapshotImage(id), meta)
	if err != nil {
		logf("snapshot %s: upload to %s failed after %s bytes: %v", id, target, human(report.UploadedBytes), err)
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	meta.Uploaded, meta.Upload = true, &report
	if err := writeJSON(d.snapshotMeta(id), meta); err != nil {
		return nil, status.Errorf(codes.Internal, "snapshot metadata: %v", err)
	}
	if err := os.Remove(d.snapshotImage(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		logf("snapshot %s is in %s; its node copy stays: %v", id, target, err)
	}
	logf("shipped snapshot %s to %s: %d chunks, %d bytes uploaded, %d reused, in %s", id, target, report.Chunks,
		report.UploadedBytes, report.ReusedBytes, time.Since(began))
	return snapshotResponse(id, meta), nil
}

func snapshotResponse(id string, meta snapshotMeta) *csi.CreateSnapshotResponse {
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{
		SnapshotId:     id,
		SourceVolumeId: meta.SourceVolume,
		SizeBytes:      meta.Size,
		CreationTime:   timestamppb.New(meta.Created),
		ReadyToUse:     meta.Cloud == "" || meta.Uploaded, // complete when CreateSnapshot returns success
	}}
}

func (d *driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	if !safeID.MatchString(id) {
		return &csi.DeleteSnapshotResponse{}, nil // no such snapshot can exist: deleted already
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var meta snapshotMeta
	local := readJSON(d.snapshotMeta(id), &meta) == nil
	if (local && meta.Cloud != "") || (!local && len(req.GetSecrets()) > 0) {
		if _, busy := d.uploading.Load(id); busy {
			return nil, status.Errorf(codes.FailedPrecondition, "snapshot %q is being uploaded; delete it afterwards", id)
		}
		target, err := targetFrom(req.GetSecrets(), "deleting cloud snapshot "+id)
		if err != nil {
			return nil, err
		}
		collected, err := target.remove(ctx, id)
		if err != nil {
			return nil, err
		}
		logf("deleted snapshot %s from %s; %d chunks no snapshot uses any more were collected", id, target, collected)
	}
	for _, path := range []string{d.snapshotImage(id), d.snapshotMeta(id)} {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, status.Errorf(codes.Internal, "delete snapshot %q: %v", id, err)
		}
	}
	logf("deleted snapshot %s", id)
	return &csi.DeleteSnapshotResponse{}, nil
}
