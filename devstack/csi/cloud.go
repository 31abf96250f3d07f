package main

// Cloud snapshots: with the VolumeSnapshotClass parameter cloud=s3, a snapshot leaves the node for S3, like
// Portworx cloudsnaps or Velero's CSI data mover. The frozen local copy is cut into 4 MiB chunks, each stored
// once under its SHA-256 (content addressing makes a second snapshot of a barely changed volume upload only
// the chunks that changed); all-zero chunks are holes and are not stored. The manifest listing the chunks is
// written last, so a snapshot whose upload was cut is never restorable, and the next attempt resumes from the
// same frozen copy, skipping chunks already stored. A restore checks every chunk's digest before writing it.
// Encrypted volumes leave encrypted: the image holds only fscrypt ciphertext for file data and names.
//
// Layout under s3://<bucket>/<prefix>/ (prefix "volumes" unless the secret says otherwise):
//
//	chunks/<sha256>          a chunk's bytes
//	snapshots/<id>.json      a committed snapshot (cloudManifest)
//	pending/<id>.json        the chunks of an upload in progress, which the garbage collector must keep
//
// Where and as whom: the snapshotter secret of the VolumeSnapshotClass (CreateSnapshot, DeleteSnapshot) and
// the provisioner secret of the StorageClass (a restore), with the keys below; any cluster whose driver is
// given the same secret can restore, which is what a migration needs.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	paramCloud     = "cloud" // VolumeSnapshotClass parameter: "s3" ships the snapshot to S3
	cloudChunkSize = 4 << 20
	cloudWorkers   = 4
	manifestFormat = 1
)

// Secret keys naming the S3 target and its credentials.
const (
	secretEndpoint  = "endpoint"
	secretRegion    = "region"
	secretBucket    = "bucket"
	secretPrefix    = "prefix"
	secretAccessKey = "accessKeyId"
	secretSecretKey = "secretAccessKey"
)

type cloudTarget struct {
	client *s3.Client
	bucket string
	prefix string
}

func (t cloudTarget) String() string { return "s3://" + t.bucket + "/" + t.prefix }

func (t cloudTarget) key(parts ...string) string { return t.prefix + "/" + strings.Join(parts, "/") }

// cloudManifest is a committed snapshot: enough to rebuild the image byte for byte on any node.
type cloudManifest struct {
	Format       int       `json:"format"`
	Snapshot     string    `json:"snapshot"`
	SourceVolume string    `json:"source_volume"`
	Size         int64     `json:"size"`
	ChunkSize    int64     `json:"chunk_size"`
	Encrypted    bool      `json:"encrypted,omitempty"`
	Created      time.Time `json:"created"`
	Chunks       []string  `json:"chunks"` // SHA-256 per chunk index; "" for an all-zero chunk (a hole)
}

// uploadReport says what an upload moved: the incremental saving is reused versus uploaded.
type uploadReport struct {
	Chunks        int   `json:"chunks"`
	UploadedBytes int64 `json:"uploaded_bytes"`
	ReusedBytes   int64 `json:"reused_bytes"`
}

func wantsCloud(params map[string]string) (bool, error) {
	switch value := params[paramCloud]; value {
	case "", "none":
		return false, nil
	case "s3":
		return true, nil
	default:
		return false, status.Errorf(codes.InvalidArgument, "parameter %s=%q: only \"s3\" is supported", paramCloud, value)
	}
}

// targetFrom builds the S3 client from a CSI secret; what names the call, for the error a user sees.
func targetFrom(secrets map[string]string, what string) (cloudTarget, error) {
	var missing []string
	for _, key := range []string{secretEndpoint, secretBucket, secretAccessKey, secretSecretKey} {
		if secrets[key] == "" {
			missing = append(missing, key)
		}
	}
	if len(missing) > 0 {
		return cloudTarget{}, status.Errorf(codes.InvalidArgument,
			"%s needs the S3 secret (keys %s missing): set csi.storage.k8s.io/snapshotter-secret-name and "+
				"-namespace on the VolumeSnapshotClass, or provisioner-secret-* on the StorageClass for a restore",
			what, strings.Join(missing, ", "))
	}
	region, prefix := secrets[secretRegion], strings.Trim(secrets[secretPrefix], "/")
	if region == "" {
		region = "us-east-1"
	}
	if prefix == "" {
		prefix = "volumes"
	}
	client := s3.New(s3.Options{
		Region:                     region,
		BaseEndpoint:               aws.String(secrets[secretEndpoint]),
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(secrets[secretAccessKey], secrets[secretSecretKey], ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		RetryMaxAttempts:           3,
		HTTPClient:                 &http.Client{Timeout: 2 * time.Minute},
	})
	return cloudTarget{client: client, bucket: secrets[secretBucket], prefix: prefix}, nil
}

// s3Status maps an S3 failure to the gRPC code the CO acts on: refused credentials are not retried blindly.
func s3Status(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden":
			return status.Errorf(codes.PermissionDenied, "%s: S3 refused the credentials (%s)", msg, api.ErrorCode())
		case "NoSuchBucket":
			return status.Errorf(codes.FailedPrecondition, "%s: the bucket does not exist", msg)
		}
	}
	return status.Errorf(codes.Unavailable, "%s: %v", msg, err)
}

func notFound(err error) bool {
	var noKey *types.NoSuchKey
	var missing *types.NotFound
	var api smithy.APIError
	return errors.As(err, &noKey) || errors.As(err, &missing) || (errors.As(err, &api) && api.ErrorCode() == "NotFound")
}

// chunkDigests reads image chunk by chunk: the digest of each, "" for all-zero ones.
func chunkDigests(image string) ([]string, int64, error) {
	in, err := os.Open(image)
	if err != nil {
		return nil, 0, err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return nil, 0, err
	}
	size := info.Size()
	zero := make([]byte, cloudChunkSize)
	buf := make([]byte, cloudChunkSize)
	var digests []string
	for offset := int64(0); offset < size; offset += cloudChunkSize {
		n, err := in.ReadAt(buf, offset)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, 0, err
		}
		if bytes.Equal(buf[:n], zero[:n]) {
			digests = append(digests, "")
			continue
		}
		sum := sha256.Sum256(buf[:n])
		digests = append(digests, hex.EncodeToString(sum[:]))
	}
	return digests, size, nil
}

// storedChunks lists the chunk digests already in the store (one listing instead of a HEAD per chunk).
func (t cloudTarget) storedChunks(ctx context.Context) (map[string]bool, error) {
	return t.listNames(ctx, "chunks", "")
}

// listNames lists the object names under <prefix>/<dir>/, stripped of suffix.
func (t cloudTarget) listNames(ctx context.Context, dir, suffix string) (map[string]bool, error) {
	names := map[string]bool{}
	pages := s3.NewListObjectsV2Paginator(t.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(t.bucket), Prefix: aws.String(t.key(dir) + "/"),
	})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, obj := range page.Contents {
			name := strings.TrimPrefix(aws.ToString(obj.Key), t.key(dir)+"/")
			names[strings.TrimSuffix(name, suffix)] = true
		}
	}
	return names, nil
}

func (t cloudTarget) putJSON(ctx context.Context, key string, v any) error {
	body, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	_, err = t.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(t.bucket), Key: aws.String(key),
		Body: bytes.NewReader(body), ContentType: aws.String("application/json")})
	return err
}

func (t cloudTarget) manifest(ctx context.Context, id string) (cloudManifest, error) {
	var m cloudManifest
	out, err := t.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(t.bucket),
		Key: aws.String(t.key("snapshots", id+".json"))})
	if err != nil {
		return m, err
	}
	defer out.Body.Close()
	if err := json.NewDecoder(out.Body).Decode(&m); err != nil {
		return m, fmt.Errorf("manifest of %s: %w", id, err)
	}
	if m.Format != manifestFormat || m.ChunkSize <= 0 || int64(len(m.Chunks)) != (m.Size+m.ChunkSize-1)/m.ChunkSize {
		return m, fmt.Errorf("manifest of %s is not a format-%d manifest of %d bytes", id, manifestFormat, m.Size)
	}
	return m, nil
}

// forEachChunk runs fn on the chunk indices in parallel; the first error stops the rest.
func forEachChunk(ctx context.Context, indices []int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan int)
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for range cloudWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
	for _, i := range indices {
		select {
		case work <- i:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	return first
}

// upload ships the snapshot image of id to t and commits its manifest; chunks already stored are reused.
func (t cloudTarget) upload(ctx context.Context, id string, image string, meta snapshotMeta) (uploadReport, error) {
	var report uploadReport
	digests, size, err := chunkDigests(image)
	if err != nil {
		return report, status.Errorf(codes.Internal, "read snapshot image %s: %v", image, err)
	}
	report.Chunks = len(digests)
	pendingKey := t.key("pending", id+".json")
	if err := t.putJSON(ctx, pendingKey, digests); err != nil {
		return report, s3Status(err, "snapshot %q: register the upload in %s", id, t)
	}
	stored, err := t.storedChunks(ctx)
	if err != nil {
		return report, s3Status(err, "snapshot %q: list the chunks in %s", id, t)
	}
	var todo []int
	queued := map[string]bool{}
	for i, digest := range digests {
		length := min(int64(cloudChunkSize), size-int64(i)*cloudChunkSize)
		switch {
		case digest == "":
		case stored[digest] || queued[digest]:
			report.ReusedBytes += length
		default:
			queued[digest] = true
			todo = append(todo, i)
		}
	}
	in, err := os.Open(image)
	if err != nil {
		return report, status.Errorf(codes.Internal, "open %s: %v", image, err)
	}
	defer in.Close()
	var uploaded, done atomic.Int64
	err = forEachChunk(ctx, todo, func(ctx context.Context, i int) error {
		buf := make([]byte, min(int64(cloudChunkSize), size-int64(i)*cloudChunkSize))
		if _, err := in.ReadAt(buf, int64(i)*cloudChunkSize); err != nil && !errors.Is(err, io.EOF) {
			return status.Errorf(codes.Internal, "read chunk %d of %s: %v", i, image, err)
		}
		sum := sha256.Sum256(buf)
		if hex.EncodeToString(sum[:]) != digests[i] {
			return status.Errorf(codes.Internal, "chunk %d of %s changed while uploading", i, image)
		}
		_, err := t.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(t.bucket),
			Key: aws.String(t.key("chunks", digests[i])), Body: bytes.NewReader(buf)})
		if err != nil {
			return s3Status(err, "snapshot %q: upload interrupted after %d of %d new chunks to %s (the next "+
				"attempt resumes; nothing is restorable until the manifest is written)", id, done.Load(), len(todo), t)
		}
		uploaded.Add(int64(len(buf)))
		done.Add(1)
		return nil
	})
	report.UploadedBytes = uploaded.Load()
	if err != nil {
		return report, err
	}
	// a chunk reused from an older snapshot could have been collected meanwhile by another cluster's delete
	if stored, err = t.storedChunks(ctx); err != nil {
		return report, s3Status(err, "snapshot %q: verify the chunks in %s", id, t)
	}
	for i, digest := range digests {
		if digest != "" && !stored[digest] {
			return report, status.Errorf(codes.Aborted, "snapshot %q: chunk %d vanished from %s during the "+
				"upload (a concurrent delete); retry", id, i, t)
		}
	}
	manifest := cloudManifest{Format: manifestFormat, Snapshot: id, SourceVolume: meta.SourceVolume, Size: size,
		ChunkSize: cloudChunkSize, Encrypted: meta.Encrypted, Created: meta.Created, Chunks: digests}
	if err := t.putJSON(ctx, t.key("snapshots", id+".json"), manifest); err != nil {
		return report, s3Status(err, "snapshot %q: commit the manifest to %s", id, t)
	}
	if _, err := t.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(t.bucket),
		Key: aws.String(pendingKey)}); err != nil {
		logf("snapshot %s committed; its pending record stays (harmless until collected): %v", id, err)
	}
	return report, nil
}

// download rebuilds snapshot id's image at path from t, checking every chunk's digest; returns the manifest.
func (t cloudTarget) download(ctx context.Context, id string, m cloudManifest, path string) error {
	out, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return status.Errorf(codes.Internal, "create %s: %v", path, err)
	}
	defer out.Close()
	var indices []int
	for i, digest := range m.Chunks {
		if digest != "" {
			indices = append(indices, i)
		}
	}
	err = forEachChunk(ctx, indices, func(ctx context.Context, i int) error {
		obj, err := t.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(t.bucket),
			Key: aws.String(t.key("chunks", m.Chunks[i]))})
		if err != nil {
			if notFound(err) {
				if _, gone := t.manifest(ctx, id); gone != nil && notFound(gone) {
					return status.Errorf(codes.NotFound, "snapshot %q was deleted from %s during the restore", id, t)
				}
				return status.Errorf(codes.DataLoss, "snapshot %q: chunk %d (%s) is missing from %s", id, i, m.Chunks[i], t)
			}
			return s3Status(err, "snapshot %q: download chunk %d from %s", id, i, t)
		}
		defer obj.Body.Close()
		data, err := io.ReadAll(io.LimitReader(obj.Body, m.ChunkSize+1))
		if err != nil {
			return s3Status(err, "snapshot %q: read chunk %d from %s", id, i, t)
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != m.Chunks[i] {
			return status.Errorf(codes.DataLoss, "snapshot %q: chunk %d from %s has digest %s, the manifest says %s; "+
				"refusing to restore it", id, i, t, got, m.Chunks[i])
		}
		if _, err := out.WriteAt(data, int64(i)*m.ChunkSize); err != nil {
			return status.Errorf(codes.Internal, "write chunk %d to %s: %v", i, path, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := out.Truncate(m.Size); err != nil {
		return status.Errorf(codes.Internal, "size %s: %v", path, err)
	}
	if err := out.Sync(); err != nil {
		return status.Errorf(codes.Internal, "sync %s: %v", path, err)
	}
	return nil
}

// remove deletes snapshot id's manifest, then every chunk no committed or pending snapshot still uses.
func (t cloudTarget) remove(ctx context.Context, id string) (int, error) {
	if _, err := t.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(t.bucket),
		Key: aws.String(t.key("snapshots", id+".json"))}); err != nil {
		return 0, s3Status(err, "delete snapshot %q from %s", id, t)
	}
	_, _ = t.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(t.bucket),
		Key: aws.String(t.key("pending", id+".json"))})
	used := map[string]bool{}
	for _, dir := range []string{"snapshots", "pending"} {
		names, err := t.listNames(ctx, dir, ".json")
		if err != nil {
			return 0, s3Status(err, "list %s in %s", dir, t)
		}
		for name := range names {
			if err := t.markUsed(ctx, dir, name, used); err != nil {
				return 0, err
			}
		}
	}
	stored, err := t.storedChunks(ctx)
	if err != nil {
		return 0, s3Status(err, "list the chunks in %s", t)
	}
	var unused []string
	for digest := range stored {
		if !used[digest] {
			unused = append(unused, digest)
		}
	}
	sort.Strings(unused)
	for _, digest := range unused {
		if _, err := t.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(t.bucket),
			Key: aws.String(t.key("chunks", digest))}); err != nil {
			return 0, s3Status(err, "collect chunk %s in %s", digest, t)
		}
	}
	return len(unused), nil
}

// markUsed adds the chunks of one committed manifest or pending record to used.
func (t cloudTarget) markUsed(ctx context.Context, dir, name string, used map[string]bool) error {
	if dir == "snapshots" {
		m, err := t.manifest(ctx, name)
		if notFound(err) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return status.Errorf(codes.Internal, "read manifest %s in %s: %v (nothing collected)", name, t, err)
		}
		for _, digest := range m.Chunks {
			used[digest] = true
		}
		return nil
	}
	obj, err := t.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(t.bucket),
		Key: aws.String(t.key(dir, name+".json"))})
	if notFound(err) {
		return nil
	}
	if err != nil {
		return s3Status(err, "read pending record %s in %s", name, t)
	}
	defer obj.Body.Close()
	var digests []string
	if err := json.NewDecoder(obj.Body).Decode(&digests); err != nil {
		return status.Errorf(codes.Internal, "pending record %s in %s: %v (nothing collected)", name, t, err)
	}
	for _, digest := range digests {
		used[digest] = true
	}
	return nil
}
