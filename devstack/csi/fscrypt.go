package main

// Encryption at rest with fscrypt v2 policies on the volume's ext4 (there is no device-mapper on these hosts,
// so no LUKS/dm-crypt). The volume's data directory carries an AES-256-XTS/AES-256-CTS policy whose master key
// comes from the node-stage Secret; v2 keys live in the filesystem's keyring, so the pod's processes (any user)
// read the unlocked files, and nothing is readable from the image, from a snapshot copied off it or after
// unstaging. A key is checked by its identifier (the kernel's HKDF of the key) against the policy's, so a wrong
// key is refused before anything is mounted for the pod, and the data is never touched.

import (
	"encoding/hex"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const keySize = 32 // bytes of raw key material the Secret must hold (64 hex digits, or 32 raw bytes)

// parseKey takes the Secret's "key" entry: 64 hex digits or 32 raw bytes.
func parseKey(secrets map[string]string) ([]byte, error) {
	value, ok := secrets["key"]
	if !ok {
		return nil, fmt.Errorf("the node-stage Secret has no \"key\" entry (entries: %d)", len(secrets))
	}
	if raw, err := hex.DecodeString(value); err == nil && len(raw) == keySize {
		return raw, nil
	}
	if len(value) == keySize {
		return []byte(value), nil
	}
	return nil, fmt.Errorf("the node-stage Secret's \"key\" must be %d bytes or %d hex digits, not %d characters",
		keySize, 2*keySize, len(value))
}

func ioctl(f *os.File, request uintptr, arg unsafe.Pointer) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), request, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

// addKey adds key to the keyring of the filesystem mounted at mountpoint and returns its identifier.
func addKey(mountpoint string, key []byte) ([16]byte, error) {
	var id [16]byte
	dir, err := os.Open(mountpoint)
	if err != nil {
		return id, err
	}
	defer dir.Close()
	// struct fscrypt_add_key_arg is followed by the raw key bytes (a flexible array member)
	buf := make([]byte, unsafe.Sizeof(unix.FscryptAddKeyArg{})+uintptr(len(key)))
	arg := (*unix.FscryptAddKeyArg)(unsafe.Pointer(&buf[0]))
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	arg.Raw_size = uint32(len(key))
	copy(buf[unsafe.Sizeof(unix.FscryptAddKeyArg{}):], key)
	if err := ioctl(dir, unix.FS_IOC_ADD_ENCRYPTION_KEY, unsafe.Pointer(&buf[0])); err != nil {
		return id, fmt.Errorf("FS_IOC_ADD_ENCRYPTION_KEY on %s: %w", mountpoint, err)
	}
	copy(id[:], arg.Key_spec.U[:16])
	clear(buf)
	return id, nil
}

// removeKey removes the key with identifier id from the filesystem at mountpoint (locking its files).
func removeKey(mountpoint string, id [16]byte) error {
	dir, err := os.Open(mountpoint)
	if err != nil {
		return err
	}
	defer dir.Close()
	var arg unix.FscryptRemoveKeyArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:16], id[:])
	if err := ioctl(dir, unix.FS_IOC_REMOVE_ENCRYPTION_KEY, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("FS_IOC_REMOVE_ENCRYPTION_KEY on %s: %w", mountpoint, err)
	}
	return nil
}

// setPolicy puts a v2 policy for key id on the (empty) directory dir.
func setPolicy(dir string, id [16]byte) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	policy := unix.FscryptPolicyV2{
		Version:                   unix.FSCRYPT_POLICY_V2,
		Contents_encryption_mode:  unix.FSCRYPT_MODE_AES_256_XTS,
		Filenames_encryption_mode: unix.FSCRYPT_MODE_AES_256_CTS,
		Flags:                     unix.FSCRYPT_POLICY_FLAGS_PAD_32,
		Master_key_identifier:     id,
	}
	if err := ioctl(f, unix.FS_IOC_SET_ENCRYPTION_POLICY, unsafe.Pointer(&policy)); err != nil {
		return fmt.Errorf("FS_IOC_SET_ENCRYPTION_POLICY on %s: %w", dir, err)
	}
	return nil
}

// policyKey returns the key identifier of dir's v2 policy; ok is false when dir has no policy.
func policyKey(dir string) (id [16]byte, ok bool, err error) {
	f, err := os.Open(dir)
	if err != nil {
		return id, false, err
	}
	defer f.Close()
	arg := unix.FscryptGetPolicyExArg{Size: uint64(unsafe.Sizeof(unix.FscryptPolicyV2{}))}
	if err := ioctl(f, unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg)); err != nil {
		if err == unix.ENODATA {
			return id, false, nil
		}
		return id, false, fmt.Errorf("FS_IOC_GET_ENCRYPTION_POLICY_EX on %s: %w", dir, err)
	}
	policy := (*unix.FscryptPolicyV2)(unsafe.Pointer(&arg.Policy[0]))
	if policy.Version != unix.FSCRYPT_POLICY_V2 {
		return id, false, fmt.Errorf("%s has a v%d encryption policy, not v2", dir, policy.Version)
	}
	return policy.Master_key_identifier, true, nil
}
