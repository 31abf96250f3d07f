package main

// Cloud snapshots against a real S3 server (the devstack's; tests/test_csi_driver.py passes its address and
// keys in EVENTPIPE_CSI_TEST_S3_*), with two drivers on separate data roots standing for two nodes or clusters.
// Faults go through an HTTP proxy in front of S3 that can cut the connection or act between two requests.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cloudSecrets returns the S3 secret for a fresh bucket of this test, removed with everything in it afterwards.
func cloudSecrets(t *testing.T) map[string]string {
	t.Helper()
	endpoint := os.Getenv("EVENTPIPE_CSI_TEST_S3_ENDPOINT")
	if endpoint == "" {
		t.Skip("EVENTPIPE_CSI_TEST_S3_ENDPOINT is not set (tests/test_csi_driver.py sets it to the devstack's S3)")
	}
	secrets := map[string]string{
		secretEndpoint: endpoint, secretRegion: "us-east-1",
		secretBucket:    fmt.Sprintf("csi-cloud-%s-%x", strings.ToLower(t.Name()[4:min(len(t.Name()), 24)]), randomBytes(t, 3)),
		secretAccessKey: os.Getenv("EVENTPIPE_CSI_TEST_S3_ACCESS_KEY"), secretSecretKey: os.Getenv("EVENTPIPE_CSI_TEST_S3_SECRET_KEY"),
	}
	target, err := targetFrom(secrets, "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := target.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(target.bucket)}); err != nil {
		t.Fatalf("create bucket %s: %v", target.bucket, err)
	}
	t.Cleanup(func() {
		for _, key := range objectKeys(t, target) {
			_, _ = target.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(target.bucket), Key: aws.String(key)})
		}
		_, _ = target.client.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(target.bucket)})
	})
	return secrets
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func objectKeys(t *testing.T, target cloudTarget) []string {
	t.Helper()
	out, err := target.client.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String(target.bucket)})
	if err != nil {
		t.Fatalf("list %s: %v", target.bucket, err)
	}
	var keys []string
	for _, obj := range out.Contents {
		keys = append(keys, aws.ToString(obj.Key))
	}
	return keys
}

// volumeWithPayload creates and mounts a plain volume of size holding a file "payload" of random bytes; its mount.
func volumeWithPayload(t *testing.T, d *driver, name string, size, payload int64) string {
	t.Helper()
	create(t, d, name, size, nil, "")
	dir, _ := mount(t, d, name, nil)
	mustWrite(t, filepath.Join(dir, "payload"), string(randomBytes(t, int(payload))))
	return dir
}

func mustTarget(t *testing.T, secrets map[string]string) cloudTarget {
	t.Helper()
	target, err := targetFrom(secrets, "test")
	if err != nil {
		t.Fatal(err)
	}
	return target
}

func cloudSnapshot(d *driver, name, source string, secrets map[string]string) (*csi.CreateSnapshotResponse, error) {
	return d.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: source,
		Parameters: map[string]string{paramCloud: "s3"}, Secrets: secrets})
}

func restoreReq(name, snapshot string, size int64, params, secrets map[string]string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: params, Secrets: secrets,
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapshot}}}}
}

func uploadOf(t *testing.T, d *driver, id string) uploadReport {
	t.Helper()
	var meta snapshotMeta
	if err := readJSON(d.snapshotMeta(id), &meta); err != nil || meta.Upload == nil || !meta.Uploaded {
		t.Fatalf("snapshot %s metadata %+v: %v", id, meta, err)
	}
	return *meta.Upload
}

func digestOf(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func TestCloudSnapshotIsIncrementalAndRestoresOnANodeThatNeverHeldIt(t *testing.T) {
	secrets := cloudSecrets(t)
	source, other := newTestDriver(t), newTestDriver(t)
	dir := volumeWithPayload(t, source, "pvc-data", 64*mib, 12*mib)
	first := digestOf(t, filepath.Join(dir, "payload"))
	if _, err := cloudSnapshot(source, "snap-full", "pvc-data", secrets); err != nil {
		t.Fatalf("first cloud snapshot: %v", err)
	}
	full := uploadOf(t, source, "snap-full")
	if full.UploadedBytes < 12*mib || full.ReusedBytes != 0 {
		t.Fatalf("first snapshot uploaded %+v, want all of its 12 MiB payload and nothing reused", full)
	}
	if _, err := os.Stat(source.snapshotImage("snap-full")); !os.IsNotExist(err) {
		t.Fatalf("the node copy of a shipped snapshot must be gone: %v", err)
	}
	// a small change: one chunk of the payload and some metadata blocks change, nothing else
	f, err := os.OpenFile(filepath.Join(dir, "payload"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("changed"), 5*mib); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := cloudSnapshot(source, "snap-incr", "pvc-data", secrets); err != nil {
		t.Fatalf("second cloud snapshot: %v", err)
	}
	incr := uploadOf(t, source, "snap-incr")
	t.Logf("full: %d bytes uploaded; incremental: %d uploaded, %d reused", full.UploadedBytes, incr.UploadedBytes, incr.ReusedBytes)
	if incr.UploadedBytes > 4*cloudChunkSize || incr.ReusedBytes < 8*mib {
		t.Fatalf("incremental snapshot moved %+v, want at most 4 chunks uploaded and the rest reused", incr)
	}
	// another node (its own data root, no copy of either snapshot) restores the first into a larger volume
	if _, err := other.CreateVolume(context.Background(), restoreReq("pvc-moved", "snap-full", 128*mib, nil, secrets)); err != nil {
		t.Fatalf("restore on the other node: %v", err)
	}
	moved, _ := mount(t, other, "pvc-moved", nil)
	if got := digestOf(t, filepath.Join(moved, "payload")); got != first {
		t.Fatal("the restored payload differs from the snapshot's")
	}
	if _, err := other.CreateVolume(context.Background(), restoreReq("pvc-none", "snap-absent", 128*mib, nil, secrets)); status.Code(err) != codes.NotFound {
		t.Fatalf("restore of a snapshot nowhere: want NotFound, got %v", err)
	}
}

func TestCloudSnapshotOfAnEncryptedVolumeLeavesTheNodeEncrypted(t *testing.T) {
	secrets := cloudSecrets(t)
	source, other := newTestDriver(t), newTestDriver(t)
	enc := map[string]string{paramEncrypted: "true"}
	create(t, source, "pvc-enc", 32*mib, enc, "")
	dir, _ := mount(t, source, "pvc-enc", map[string]string{"key": testKey})
	record := `{"device_id":"meter-cloud-7","value":42.125,"note":"plaintext-canary-cloud"}`
	mustWrite(t, filepath.Join(dir, "records.json"), strings.Repeat(record+"\n", 2000))
	if _, err := cloudSnapshot(source, "snap-enc", "pvc-enc", secrets); err != nil {
		t.Fatalf("cloud snapshot: %v", err)
	}
	target := mustTarget(t, secrets)
	keys := objectKeys(t, target)
	for _, key := range keys {
		obj, err := target.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(target.bucket), Key: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(obj.Body)
		obj.Body.Close()
		if bytes.Contains(data, []byte("plaintext-canary-cloud")) || bytes.Contains(data, []byte("records.json")) {
			t.Fatalf("object %s holds plaintext of the encrypted volume", key)
		}
	}
	if _, err := other.CreateVolume(context.Background(), restoreReq("pvc-clear", "snap-enc", 32*mib, nil, secrets)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("restoring an encrypted snapshot into a plain class: want InvalidArgument, got %v", err)
	}
	if _, err := other.CreateVolume(context.Background(), restoreReq("pvc-enc2", "snap-enc", 32*mib, enc, secrets)); err != nil {
		t.Fatalf("restore: %v", err)
	}
	restored, _ := mount(t, other, "pvc-enc2", map[string]string{"key": testKey})
	if got := mustRead(t, filepath.Join(restored, "records.json")); !strings.HasPrefix(got, record) {
		t.Fatalf("restored records start %q", got[:min(len(got), 80)])
	}
	t.Logf("%d objects in the bucket, none with plaintext", len(keys))
}

func TestCloudRestoreRefusesAChunkWhoseDigestDoesNotMatch(t *testing.T) {
	secrets := cloudSecrets(t)
	source, other := newTestDriver(t), newTestDriver(t)
	volumeWithPayload(t, source, "pvc-a", 32*mib, 4*mib)
	if _, err := cloudSnapshot(source, "snap-a", "pvc-a", secrets); err != nil {
		t.Fatal(err)
	}
	target := mustTarget(t, secrets)
	m, err := target.manifest(context.Background(), "snap-a")
	if err != nil {
		t.Fatal(err)
	}
	var victim string
	for _, digest := range m.Chunks {
		if digest != "" {
			victim = digest
		}
	}
	if _, err := target.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(target.bucket),
		Key: aws.String(target.key("chunks", victim)), Body: bytes.NewReader(randomBytes(t, 4096))}); err != nil {
		t.Fatal(err)
	}
	_, err = other.CreateVolume(context.Background(), restoreReq("pvc-b", "snap-a", 32*mib, nil, secrets))
	if status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), "refusing to restore") {
		t.Fatalf("restore over a corrupted chunk: want DataLoss refusing to restore, got %v", err)
	}
	for _, path := range []string{other.volumeImage("pvc-b"), other.volumeImage("pvc-b") + ".partial", other.volumeMeta("pvc-b")} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatalf("%s left behind by a refused restore", path)
		}
	}
}

// s3Proxy forwards to the real S3 server; before each request, hook may fail it (the connection is cut).
type s3Proxy struct {
	url          string
	requests     atomic.Int64
	chunksStored atomic.Int64 // chunk PUTs the server has answered
	mu           sync.Mutex
	hook         func(r *http.Request, n int64) bool
}

func newS3Proxy(t *testing.T, upstream string) *s3Proxy {
	t.Helper()
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	p := &s3Proxy{}
	forward := httputil.NewSingleHostReverseProxy(target)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := p.requests.Add(1)
		p.mu.Lock()
		hook := p.hook
		p.mu.Unlock()
		if hook != nil && hook(r, n) {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close() // the network died mid-request
			}
			return
		}
		forward.ServeHTTP(w, r)
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/chunks/") {
			p.chunksStored.Add(1)
		}
	})}
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(func() { server.Close() })
	p.url = "http://" + listener.Addr().String()
	return p
}

func (p *s3Proxy) setHook(hook func(r *http.Request, n int64) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hook = hook
}

func via(secrets map[string]string, endpoint string) map[string]string {
	out := map[string]string{}
	for k, v := range secrets {
		out[k] = v
	}
	out[secretEndpoint] = endpoint
	return out
}

func TestCloudUploadCutMidwayIsNeverRestorableAndResumes(t *testing.T) {
	secrets := cloudSecrets(t)
	source, other := newTestDriver(t), newTestDriver(t)
	proxy := newS3Proxy(t, secrets[secretEndpoint])
	cut := via(secrets, proxy.url)
	dir := volumeWithPayload(t, source, "pvc-a", 64*mib, 24*mib)
	proxy.setHook(func(r *http.Request, _ int64) bool { // S3 goes away once 3 chunks have been stored
		return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/chunks/") && proxy.chunksStored.Load() >= 3
	})
	_, err := cloudSnapshot(source, "snap-cut", "pvc-a", cut)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "upload interrupted") {
		t.Fatalf("cut upload: want Unavailable upload interrupted, got %v", err)
	}
	got, err := source.GetSnapshot(context.Background(), &csi.GetSnapshotRequest{SnapshotId: "snap-cut"})
	if err != nil || got.GetSnapshot().GetReadyToUse() {
		t.Fatalf("a cut cloud snapshot must not be ready: %v %v", got, err)
	}
	if _, err := other.CreateVolume(context.Background(), restoreReq("pvc-b", "snap-cut", 64*mib, nil, secrets)); status.Code(err) != codes.NotFound {
		t.Fatalf("restoring a cut snapshot: want NotFound, got %v", err)
	}
	mustWrite(t, filepath.Join(dir, "later"), "written after the cut: not in the snapshot")
	proxy.setHook(nil)
	if _, err := cloudSnapshot(source, "snap-cut", "pvc-a", cut); err != nil {
		t.Fatalf("resumed upload: %v", err)
	}
	resumed := uploadOf(t, source, "snap-cut")
	t.Logf("resumed upload: %+v", resumed)
	if resumed.ReusedBytes < 3*cloudChunkSize {
		t.Fatalf("the resumed upload reused %d bytes, want the 3 chunks stored before the cut", resumed.ReusedBytes)
	}
	if _, err := other.CreateVolume(context.Background(), restoreReq("pvc-b", "snap-cut", 64*mib, nil, secrets)); err != nil {
		t.Fatalf("restore after the resumed upload: %v", err)
	}
	restored, _ := mount(t, other, "pvc-b", nil)
	if digestOf(t, filepath.Join(restored, "payload")) != digestOf(t, filepath.Join(dir, "payload")) {
		t.Fatal("restored payload differs")
	}
	if _, err := os.Stat(filepath.Join(restored, "later")); !os.IsNotExist(err) {
		t.Fatal("the resumed upload must ship the frozen copy of the first attempt, not a new one")
	}
}

func TestCloudSnapshotWithWrongCredentialsIsRefusedClearly(t *testing.T) {
	secrets := cloudSecrets(t)
	d := newTestDriver(t)
	create(t, d, "pvc-a", 16*mib, nil, "")
	wrong := via(secrets, secrets[secretEndpoint])
	wrong[secretSecretKey] = "not-the-secret"
	_, err := cloudSnapshot(d, "snap-a", "pvc-a", wrong)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "S3 refused the credentials") {
		t.Fatalf("wrong keys: want PermissionDenied naming the credentials, got %v", err)
	}
	noSecret := map[string]string{}
	if _, err := cloudSnapshot(d, "snap-b", "pvc-a", noSecret); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "snapshotter-secret-name") {
		t.Fatalf("no secret: want InvalidArgument naming the class setting, got %v", err)
	}
	if _, err := cloudSnapshot(d, "snap-a", "pvc-a", secrets); err != nil {
		t.Fatalf("the same snapshot with the right keys: %v", err)
	}
}

func TestCloudDeleteKeepsChunksANewerSnapshotUsesAndCollectsTheRest(t *testing.T) {
	secrets := cloudSecrets(t)
	d := newTestDriver(t)
	dir := volumeWithPayload(t, d, "pvc-a", 32*mib, 8*mib)
	if _, err := cloudSnapshot(d, "snap-old", "pvc-a", secrets); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, "extra"), string(randomBytes(t, int(4*mib))))
	if _, err := cloudSnapshot(d, "snap-new", "pvc-a", secrets); err != nil {
		t.Fatal(err)
	}
	target := mustTarget(t, secrets)
	ctx := context.Background()
	if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap-old"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("deleting a cloud snapshot without its secret: want InvalidArgument, got %v", err)
	}
	if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap-old", Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	newer, err := target.manifest(ctx, "snap-new")
	if err != nil {
		t.Fatal(err)
	}
	stored, err := target.storedChunks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, digest := range newer.Chunks {
		if digest != "" && !stored[digest] {
			t.Fatalf("chunk %d of the newer snapshot was collected with the older one", i)
		}
	}
	if _, err := d.CreateVolume(ctx, restoreReq("pvc-b", "snap-new", 32*mib, nil, secrets)); err != nil {
		t.Fatalf("restore of the newer snapshot after the older one was deleted: %v", err)
	}
	if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap-new", Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	if keys := objectKeys(t, target); len(keys) != 0 {
		t.Fatalf("after deleting every snapshot the store still holds %d objects, e.g. %s", len(keys), keys[0])
	}
}

func TestCloudSnapshotDeletedWhileBeingRestored(t *testing.T) {
	secrets := cloudSecrets(t)
	source, other := newTestDriver(t), newTestDriver(t)
	proxy := newS3Proxy(t, secrets[secretEndpoint])
	volumeWithPayload(t, source, "pvc-a", 32*mib, 8*mib)
	if _, err := cloudSnapshot(source, "snap-a", "pvc-a", secrets); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	proxy.setHook(func(r *http.Request, _ int64) bool { // the source cluster deletes it as the first chunk is read
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/chunks/") {
			once.Do(func() {
				if _, err := source.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: "snap-a", Secrets: secrets}); err != nil {
					t.Errorf("delete during the restore: %v", err)
				}
			})
		}
		return false
	})
	_, err := other.CreateVolume(context.Background(), restoreReq("pvc-b", "snap-a", 32*mib, nil, via(secrets, proxy.url)))
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "deleted") {
		t.Fatalf("restore of a snapshot deleted meanwhile: want NotFound ... deleted, got %v", err)
	}
	if _, err := os.Stat(other.volumeMeta("pvc-b")); !os.IsNotExist(err) {
		t.Fatal("a failed restore left a volume behind")
	}
}

// A migration pre-provisions a VolumeSnapshotContent with the cloud handle in a cluster whose node never held
// the snapshot: the snapshotter's ListSnapshots must find it from the committed manifest, and nothing else.
func TestCloudSnapshotIsListedOnANodeThatNeverHeldIt(t *testing.T) {
	secrets := cloudSecrets(t)
	source, other := newTestDriver(t), newTestDriver(t)
	volumeWithPayload(t, source, "pvc-listed", 32*mib, 5*mib)
	if _, err := cloudSnapshot(source, "snap-listed", "pvc-listed", secrets); err != nil {
		t.Fatalf("cloud snapshot: %v", err)
	}
	ctx := context.Background()
	got, err := other.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: "snap-listed", Secrets: secrets})
	if err != nil || len(got.Entries) != 1 {
		t.Fatalf("ListSnapshots of the cloud snapshot on the other node: %v, %v", got, err)
	}
	snap := got.Entries[0].Snapshot
	if !snap.ReadyToUse || snap.SizeBytes != 32*mib || snap.SourceVolumeId != "pvc-listed" {
		t.Fatalf("listed %+v, want ready, 32 MiB, from pvc-listed", snap)
	}
	none, err := other.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: "snap-nowhere", Secrets: secrets})
	if err != nil || len(none.Entries) != 0 {
		t.Fatalf("a snapshot in no store must list empty, got %v, %v", none, err)
	}
	bare, err := other.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: "snap-listed"})
	if err != nil || len(bare.Entries) != 0 {
		t.Fatalf("without the store's secret the node knows no such snapshot, got %v, %v", bare, err)
	}
	wrong := maps.Clone(secrets)
	wrong[secretSecretKey] = "not-the-key"
	if _, err := other.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: "snap-listed", Secrets: wrong}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("wrong credentials: want PermissionDenied, got %v", err)
	}
}
