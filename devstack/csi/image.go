package main

// Volume images: every volume is a sparse file holding an ext4 filesystem of exactly the requested size, used
// through a loop device. The filesystem's size is the volume's capacity, so a write past it gets ENOSPC from
// the kernel, not from any accounting of ours. Growing is: make the file longer (truncate), then let resize2fs
// grow the filesystem into it, offline (unmounted: e2fsck -f first) or, where the process holds
// CAP_SYS_RESOURCE, online on the mounted loop device after `losetup -c`.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	mib         = int64(1) << 20
	gib         = int64(1) << 30
	minCapacity = 8 * mib // ext4 with a journal needs a few MiB of its own
	defaultSize = 1 * gib // a CreateVolume without a capacity range
	dataDir     = "data"  // what pods see: a directory inside the filesystem (no lost+found, encryptable)
	capSysRes   = 24      // CAP_SYS_RESOURCE: resize2fs of a mounted ext4 needs it
)

// run executes a tool and returns its combined output; the error names the command and carries its output.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// makeImage creates a sparse file of size bytes and an ext4 filesystem on it with the encrypt feature (so a
// volume can carry an fscrypt policy; a plain volume simply sets none). Lazy init keeps mkfs fast.
func makeImage(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = run("mkfs.ext4", "-q", "-F", "-O", "encrypt", "-m", "0",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", path)
	return err
}

// fsSize is the size of the ext4 filesystem in path (an image or a block device): block count × block size.
func fsSize(path string) (int64, error) {
	out, err := run("dumpe2fs", "-h", path)
	if err != nil {
		return 0, err
	}
	var blocks, blockSize int64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(key) {
		case "Block count":
			blocks, _ = strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		case "Block size":
			blockSize, _ = strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		}
	}
	if blocks == 0 || blockSize == 0 {
		return 0, fmt.Errorf("dumpe2fs %s: no block count/size in its output", path)
	}
	return blocks * blockSize, nil
}

// growOffline resizes the (unmounted) filesystem in image to fill the file: e2fsck -f, then resize2fs.
func growOffline(image string) error {
	if out, err := run("e2fsck", "-f", "-y", image); err != nil {
		var exit *exec.ExitError
		// 1: errors corrected; anything at or above 4 means the filesystem is not usable as it is
		if !errors.As(err, &exit) || exit.ExitCode() >= 4 {
			return fmt.Errorf("e2fsck before resize: %w (%s)", err, out)
		}
	}
	_, err := run("resize2fs", image)
	return err
}

// canResizeOnline reports whether this process may resize a mounted ext4 (CAP_SYS_RESOURCE in its effective set).
func canResizeOnline() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && caps&(1<<capSysRes) != 0
		}
	}
	return false
}

// loopOf returns the loop device backing image, or "" when none is attached.
func loopOf(image string) (string, error) {
	out, err := run("losetup", "-n", "-O", "NAME", "-j", image)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if dev := strings.TrimSpace(line); dev != "" {
			return dev, nil
		}
	}
	return "", nil
}

// attachLoop attaches image to a free loop device (or returns the one already attached: idempotent).
func attachLoop(image string) (string, error) {
	if dev, err := loopOf(image); err != nil || dev != "" {
		return dev, err
	}
	out, err := run("losetup", "-f", "--show", image)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

func detachLoop(image string) error {
	dev, err := loopOf(image)
	if err != nil || dev == "" {
		return err
	}
	_, err = run("losetup", "-d", dev)
	return err
}

// freeBytes is the space the filesystem holding path can still give an unprivileged writer.
func freeBytes(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// allocatedBytes is the space a (sparse) file really takes on disk.
func allocatedBytes(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// sparseCopy copies src to dst (created, mode 0600) extent by extent: holes stay holes, so a copy of a 10 GiB
// image holding 50 MiB of data writes 50 MiB. Returns the data bytes copied.
func sparseCopy(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return 0, err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	size, copied := info.Size(), int64(0)
	fd := int(in.Fd())
	for offset := int64(0); offset < size; {
		start, err := unix.Seek(fd, offset, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after offset: the rest is a hole
		}
		if err != nil {
			out.Close()
			return 0, fmt.Errorf("seek data in %s: %w", src, err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			out.Close()
			return 0, fmt.Errorf("seek hole in %s: %w", src, err)
		}
		n, err := io.Copy(io.NewOffsetWriter(out, start), io.NewSectionReader(in, start, end-start))
		copied += n
		if err != nil {
			out.Close()
			return 0, err
		}
		offset = end
	}
	if err := out.Truncate(size); err != nil {
		out.Close()
		return 0, err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return 0, err
	}
	return copied, out.Close()
}

// FIFREEZE/FITHAW (_IOWR('X', 119/120, int)): a frozen ext4 has flushed its journal and blocks new writes, so
// an image copied meanwhile is a clean, consistent filesystem.
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// frozen runs fn with the filesystem mounted at mountpoint frozen.
func frozen(mountpoint string, fn func() error) error {
	dir, err := os.Open(mountpoint)
	if err != nil {
		return err
	}
	defer dir.Close()
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, dir.Fd(), fiFreeze, 0); errno != 0 {
		return fmt.Errorf("freeze %s: %w", mountpoint, errno)
	}
	fnErr := fn()
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, dir.Fd(), fiThaw, 0); errno != 0 && fnErr == nil {
		return fmt.Errorf("thaw %s: %w", mountpoint, errno)
	}
	return fnErr
}
