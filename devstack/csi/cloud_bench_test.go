package main

// The cloud-snapshot figures bench/bench_volumes.py reports (not a test: it runs only when
// EVENTPIPE_CSI_BENCH_JSON names the output file). Per data size: a volume filled with incompressible data,
// a node-local snapshot (the copy ceiling: same frozen sparse copy, no network), a full cloud snapshot, an
// incremental one after 1% of the data changed, and a restore on a second driver that never held the volume.

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

type benchRow struct {
	DataMiB              int64   `json:"data_mib"`
	VolumeMiB            int64   `json:"volume_mib"`
	LocalCopySeconds     float64 `json:"local_copy_seconds"`
	FullSeconds          float64 `json:"full_seconds"`
	FullUploadedBytes    int64   `json:"full_uploaded_bytes"`
	ChangedBytes         int64   `json:"changed_bytes"`
	IncrementalSeconds   float64 `json:"incremental_seconds"`
	IncrementalUploaded  int64   `json:"incremental_uploaded_bytes"`
	IncrementalReused    int64   `json:"incremental_reused_bytes"`
	RestoreSeconds       float64 `json:"restore_seconds"`
	RawPutMiBps          float64 `json:"raw_put_mib_per_s"` // the store's own rate: 4 MiB PUTs, 4 at a time
	FullUploadMiBps      float64 `json:"full_upload_mib_per_s"`
	RestoredDigestsMatch bool    `json:"restored_digests_match"`
}

func fillRandom(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	buf := make([]byte, 4*mib)
	for written := int64(0); written < size; written += int64(len(buf)) {
		_, _ = rng.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), size-written)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// changeSpread overwrites fraction of path in 1 MiB pieces spread evenly over the file; returns bytes changed.
func changeSpread(t *testing.T, path string, size int64, pieces int64) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{7})
	buf := make([]byte, mib)
	for i := int64(0); i < pieces; i++ {
		_, _ = rng.Read(buf)
		if _, err := f.WriteAt(buf, i*(size/pieces)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return pieces * mib
}

func TestCloudSnapshotBench(t *testing.T) {
	out := os.Getenv("EVENTPIPE_CSI_BENCH_JSON")
	if out == "" {
		t.Skip("a benchmark: bench/bench_volumes.py runs it")
	}
	secrets := cloudSecrets(t)
	var rows []benchRow
	for _, field := range strings.Split(os.Getenv("EVENTPIPE_CSI_BENCH_SIZES_MIB"), ",") {
		dataMiB, err := strconv.ParseInt(strings.TrimSpace(field), 10, 64)
		if err != nil {
			t.Fatalf("EVENTPIPE_CSI_BENCH_SIZES_MIB: %v", err)
		}
		rows = append(rows, benchOne(t, secrets, dataMiB))
		t.Logf("%+v", rows[len(rows)-1])
	}
	body, _ := json.MarshalIndent(rows, "", "  ")
	if err := os.WriteFile(out, body, 0o644); err != nil {
		t.Fatal(err)
	}
}

// rawPutRate is the store's rate for random 4 MiB objects put by as many workers as an upload uses: the ceiling
// an upload is compared with, measured next to it (the S3 server shares the disk and CPUs).
func rawPutRate(t *testing.T, secrets map[string]string, totalMiB int64) float64 {
	t.Helper()
	target := mustTarget(t, secrets)
	n := int(totalMiB / 4)
	bodies := make([][]byte, n)
	rng := rand.NewChaCha8([32]byte{9})
	for i := range bodies {
		bodies[i] = make([]byte, cloudChunkSize)
		_, _ = rng.Read(bodies[i])
	}
	indices := make([]int, n)
	for i := range indices {
		indices[i] = i
	}
	began := time.Now()
	err := forEachChunk(context.Background(), indices, func(ctx context.Context, i int) error {
		_, err := target.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(target.bucket),
			Key: aws.String(target.key("raw", strconv.Itoa(i))), Body: bytes.NewReader(bodies[i])})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	rate := float64(n*4) / time.Since(began).Seconds()
	for i := range indices {
		_, _ = target.client.DeleteObject(context.Background(), &s3.DeleteObjectInput{Bucket: aws.String(target.bucket),
			Key: aws.String(target.key("raw", strconv.Itoa(i)))})
	}
	return rate
}

func benchOne(t *testing.T, secrets map[string]string, dataMiB int64) benchRow {
	ctx := context.Background()
	source, other := newTestDriver(t), newTestDriver(t)
	row := benchRow{DataMiB: dataMiB, VolumeMiB: dataMiB + dataMiB/10 + 64}
	vol := "pvc-bench-" + strconv.FormatInt(dataMiB, 10)
	create(t, source, vol, row.VolumeMiB*mib, nil, "")
	dir, unmount := mount(t, source, vol, nil)
	payload := filepath.Join(dir, "payload")
	fillRandom(t, payload, dataMiB*mib, uint64(dataMiB))

	began := time.Now()
	if _, err := source.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "local", SourceVolumeId: vol}); err != nil {
		t.Fatal(err)
	}
	row.LocalCopySeconds = time.Since(began).Seconds()
	if _, err := source.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "local"}); err != nil {
		t.Fatal(err)
	}

	began = time.Now()
	if _, err := cloudSnapshot(source, "full", vol, secrets); err != nil {
		t.Fatal(err)
	}
	row.FullSeconds, row.FullUploadedBytes = time.Since(began).Seconds(), uploadOf(t, source, "full").UploadedBytes
	row.FullUploadMiBps = float64(row.FullUploadedBytes) / float64(mib) / row.FullSeconds
	row.RawPutMiBps = rawPutRate(t, secrets, min(dataMiB, 512))
	want := digestOf(t, payload)

	row.ChangedBytes = changeSpread(t, payload, dataMiB*mib, max(dataMiB/100, 1))
	began = time.Now()
	if _, err := cloudSnapshot(source, "incremental", vol, secrets); err != nil {
		t.Fatal(err)
	}
	row.IncrementalSeconds = time.Since(began).Seconds()
	incr := uploadOf(t, source, "incremental")
	row.IncrementalUploaded, row.IncrementalReused = incr.UploadedBytes, incr.ReusedBytes
	unmount()
	if _, err := source.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol}); err != nil {
		t.Fatal(err)
	}

	began = time.Now()
	if _, err := other.CreateVolume(ctx, restoreReq(vol, "full", row.VolumeMiB*mib, nil, secrets)); err != nil {
		t.Fatal(err)
	}
	row.RestoreSeconds = time.Since(began).Seconds()
	restored, unmountRestored := mount(t, other, vol, nil)
	row.RestoredDigestsMatch = digestOf(t, filepath.Join(restored, "payload")) == want
	unmountRestored()
	if _, err := other.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"full", "incremental"} {
		if _, err := source.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: secrets}); err != nil {
			t.Fatal(err)
		}
	}
	return row
}
