package main

// Listing volumes and snapshots for the CO (and operators): entries sorted by id, paginated by a token that is
// the index of the next entry; a token the driver did not hand out is refused with Aborted, as the spec asks.

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ids lists the metadata files in dir (volumes or snapshots), sorted, without their .json suffix.
func (d *driver) ids(dir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(d.root, dir))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list %s: %v", dir, err)
	}
	var ids []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".json") && !strings.HasSuffix(name, ".staged.json") {
			ids = append(ids, strings.TrimSuffix(name, ".json"))
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// page cuts ids at token for at most maxEntries (0: all); returns the page and the next token.
func page(ids []string, token string, maxEntries int32) ([]string, string, error) {
	if maxEntries < 0 {
		return nil, "", status.Errorf(codes.InvalidArgument, "max_entries %d is negative", maxEntries)
	}
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(ids) {
			return nil, "", status.Errorf(codes.Aborted, "starting token %q is not one this driver issued", token)
		}
		start = n
	}
	end := len(ids)
	if maxEntries > 0 && start+int(maxEntries) < end {
		end = start + int(maxEntries)
	}
	next := ""
	if end < len(ids) {
		next = strconv.Itoa(end)
	}
	return ids[start:end], next, nil
}

func (d *driver) ListVolumes(_ context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	ids, err := d.ids("volumes")
	if err != nil {
		return nil, err
	}
	ids, next, err := page(ids, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, id := range ids {
		var meta volumeMeta
		if readJSON(d.volumeMeta(id), &meta) != nil {
			continue // deleted meanwhile
		}
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: d.volumeResponse(id, meta).GetVolume()})
	}
	return resp, nil
}

func (d *driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	ids, err := d.ids("snapshots")
	if err != nil {
		return nil, err
	}
	if want := req.GetSnapshotId(); want != "" {
		ids = filter(ids, func(id string) bool { return id == want })
		if len(ids) == 0 && len(req.GetSecrets()) > 0 {
			return d.listCloudSnapshot(ctx, want, req.GetSecrets())
		}
	}
	if source := req.GetSourceVolumeId(); source != "" {
		ids = filter(ids, func(id string) bool {
			var meta snapshotMeta
			return readJSON(d.snapshotMeta(id), &meta) == nil && meta.SourceVolume == source
		})
	}
	ids, next, err := page(ids, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, id := range ids {
		var meta snapshotMeta
		if readJSON(d.snapshotMeta(id), &meta) != nil {
			continue
		}
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotResponse(id, meta).GetSnapshot()})
	}
	return resp, nil
}

func (d *driver) GetSnapshot(_ context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	var meta snapshotMeta
	if !safeID.MatchString(id) || readJSON(d.snapshotMeta(id), &meta) != nil {
		return nil, status.Errorf(codes.NotFound, "snapshot %q does not exist", id)
	}
	return &csi.GetSnapshotResponse{Snapshot: snapshotResponse(id, meta).GetSnapshot()}, nil
}

func filter(ids []string, keep func(string) bool) []string {
	var out []string
	for _, id := range ids {
		if keep(id) {
			out = append(out, id)
		}
	}
	return out
}

// listCloudSnapshot answers ListSnapshots for a snapshot this node never held but the S3 store given by the
// class's snapshotter-list secret has committed: a pre-provisioned VolumeSnapshotContent in another cluster (a
// migration's restore) becomes ready from the committed manifest alone. An upload that never committed its
// manifest is not listed, so such a content never turns ready.
func (d *driver) listCloudSnapshot(ctx context.Context, id string, secrets map[string]string) (*csi.ListSnapshotsResponse, error) {
	if !safeID.MatchString(id) {
		return &csi.ListSnapshotsResponse{}, nil
	}
	target, err := targetFrom(secrets, "listing cloud snapshot "+id)
	if err != nil {
		return nil, err
	}
	m, err := target.manifest(ctx, id)
	if err != nil {
		if notFound(err) {
			return &csi.ListSnapshotsResponse{}, nil
		}
		return nil, s3Status(err, "manifest of cloud snapshot %s in %s", id, target)
	}
	return &csi.ListSnapshotsResponse{Entries: []*csi.ListSnapshotsResponse_Entry{{Snapshot: &csi.Snapshot{
		SnapshotId:     id,
		SourceVolumeId: m.SourceVolume,
		SizeBytes:      m.Size,
		CreationTime:   timestamppb.New(m.Created),
		ReadyToUse:     true,
	}}}}, nil
}
