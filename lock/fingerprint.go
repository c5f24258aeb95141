package lock

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
)

// EnvMachineID names the environment variable that replaces the operating
// system's machine ID (for containers and machines cloned from one image).
const EnvMachineID = "PPSYNC_MACHINE_ID"

// fingerprintDomain separates these hashes from every other SHA-256 in ppsync.
const fingerprintDomain = "ppsync machine fingerprint v1\x00"

// sources are where a fingerprint's parts come from; tests replace them.
type sources struct {
	env       func(string) string
	machineID func() (string, error)
	hostname  func() (string, error)
	userName  func() (string, error)
}

// Fingerprint returns the lower-case hex SHA-256 that identifies this machine,
// as this OS user, in the family familyID. env looks up environment variables
// (pass os.Getenv; nil means an empty environment): PPSYNC_MACHINE_ID, when
// set, replaces the operating system's machine ID. Without either, Fingerprint
// returns an error wrapping [ErrNoMachineID] that says to set it.
func Fingerprint(familyID string, env func(string) string) (string, error) {
	return fingerprint(familyID, sources{
		env:       env,
		machineID: osMachineID,
		hostname:  os.Hostname,
		userName:  osUserName,
	})
}

func fingerprint(familyID string, s sources) (string, error) {
	if familyID == "" {
		return "", errors.New("lock: fingerprint: empty family ID")
	}
	id := ""
	if s.env != nil {
		id = strings.TrimSpace(s.env(EnvMachineID))
	}
	if id == "" {
		var err error
		if id, err = s.machineID(); err != nil {
			return "", fmt.Errorf("lock: fingerprint: %w", err)
		}
		if id = strings.TrimSpace(id); id == "" {
			return "", fmt.Errorf("lock: fingerprint: %w", noMachineID("the machine ID is empty"))
		}
	}
	host, err := s.hostname()
	if err != nil {
		return "", fmt.Errorf("lock: fingerprint: host name: %w", err)
	}
	name, err := s.userName()
	if err != nil {
		return "", fmt.Errorf("lock: fingerprint: user name: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(fingerprintDomain))
	// Every part is length-prefixed, so that no two lists of parts hash alike.
	// Case is folded: Windows and macOS report these in either case.
	for _, part := range []string{id, host, name, familyID} {
		p := strings.ToLower(strings.TrimSpace(part))
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(p))))
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// noMachineID returns an ErrNoMachineID that says why and what to do.
func noMachineID(why string) error {
	return fmt.Errorf("%w: %s; set %s to a stable value unique to this machine (for example a UUID from `uuidgen`)",
		ErrNoMachineID, why, EnvMachineID)
}

// osUserName returns the OS user's name; without a user database entry
// (containers with an arbitrary UID) it falls back to the numeric user ID.
func osUserName() (string, error) {
	u, err := user.Current()
	if err == nil && u.Username != "" {
		return u.Username, nil
	}
	if uid := os.Getuid(); uid >= 0 {
		return "uid:" + strconv.Itoa(uid), nil
	}
	if err == nil {
		err = errors.New("empty user name")
	}
	return "", err
}

// parseIOPlatformUUID finds IOPlatformUUID in the output of
// `ioreg -rd1 -c IOPlatformExpertDevice` (macOS). It lives here, not in
// machineid_darwin.go, so that it is tested on every OS.
func parseIOPlatformUUID(out []byte) (string, bool) {
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) != `"IOPlatformUUID"` {
			continue
		}
		v = strings.Trim(strings.TrimSpace(v), `"`)
		return v, v != ""
	}
	return "", false
}
