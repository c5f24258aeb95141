package lock

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// fakeSources returns sources with fixed values and no environment.
func fakeSources() sources {
	return sources{
		env:       func(string) string { return "" },
		machineID: func() (string, error) { return "0123456789abcdef0123456789abcdef", nil },
		hostname:  func() (string, error) { return "reception-pc", nil },
		userName:  func() (string, error) { return "clinic", nil },
	}
}

func envWith(id string) func(string) string {
	return func(k string) string {
		if k == EnvMachineID {
			return id
		}
		return ""
	}
}

func mustFingerprint(t *testing.T, family string, s sources) string {
	t.Helper()
	fp, err := fingerprint(family, s)
	if err != nil {
		t.Fatalf("fingerprint: %v", err)
	}
	if !hex64.MatchString(fp) {
		t.Fatalf("fingerprint %q is not 64 lower-case hex digits", fp)
	}
	return fp
}

func TestFingerprintStable(t *testing.T) {
	a := mustFingerprint(t, "fam1", fakeSources())
	if b := mustFingerprint(t, "fam1", fakeSources()); a != b {
		t.Fatalf("same inputs gave %s and %s", a, b)
	}
	s := fakeSources()
	s.hostname = func() (string, error) { return " RECEPTION-PC\n", nil }
	if b := mustFingerprint(t, "fam1", s); a != b {
		t.Errorf("host name case or spacing changed the fingerprint")
	}
}

func TestFingerprintChanges(t *testing.T) {
	base := mustFingerprint(t, "fam1", fakeSources())
	variants := map[string]func(*sources) string{
		"family": func(*sources) string { return "fam2" },
		"machine ID": func(s *sources) string {
			s.machineID = func() (string, error) { return "ffffffffffffffffffffffffffffffff", nil }
			return "fam1"
		},
		"PPSYNC_MACHINE_ID": func(s *sources) string { s.env = envWith("container-7"); return "fam1" },
		"host name": func(s *sources) string {
			s.hostname = func() (string, error) { return "back-office", nil }
			return "fam1"
		},
		"user name": func(s *sources) string {
			s.userName = func() (string, error) { return "admin", nil }
			return "fam1"
		},
		// Length prefixes keep parts from running into each other.
		"boundary": func(s *sources) string {
			s.hostname = func() (string, error) { return "reception-pcc", nil }
			s.userName = func() (string, error) { return "linic", nil }
			return "fam1"
		},
	}
	seen := map[string]string{base: "base"}
	for name, change := range variants {
		s := fakeSources()
		family := change(&s)
		fp := mustFingerprint(t, family, s)
		if other, dup := seen[fp]; dup {
			t.Errorf("changing %s gave the same fingerprint as %s", name, other)
		}
		seen[fp] = name
	}
}

func TestFingerprintEnvReplacesMachineID(t *testing.T) {
	s := fakeSources()
	s.env = envWith("container-7")
	s.machineID = func() (string, error) { return "", noMachineID("none here") }
	a := mustFingerprint(t, "fam1", s)
	s.machineID = func() (string, error) { return "something-else", nil }
	if b := mustFingerprint(t, "fam1", s); a != b {
		t.Errorf("with %s set, the OS machine ID still changed the fingerprint", EnvMachineID)
	}
	s.env = nil // nil means an empty environment
	if b := mustFingerprint(t, "fam1", s); a == b {
		t.Errorf("nil env kept the %s value", EnvMachineID)
	}
}

func TestFingerprintNoMachineID(t *testing.T) {
	for name, reader := range map[string]func() (string, error){
		"not found": func() (string, error) { return "", noMachineID("nothing") },
		"empty":     func() (string, error) { return "  \n", nil },
	} {
		s := fakeSources()
		s.env = envWith("   ")
		s.machineID = reader
		_, err := fingerprint("fam1", s)
		if !errors.Is(err, ErrNoMachineID) {
			t.Errorf("%s: err = %v, want ErrNoMachineID", name, err)
			continue
		}
		if !strings.Contains(err.Error(), "set "+EnvMachineID) {
			t.Errorf("%s: message %q does not say to set %s", name, err, EnvMachineID)
		}
	}
}

func TestFingerprintErrors(t *testing.T) {
	if _, err := fingerprint("", fakeSources()); err == nil {
		t.Error("empty family ID accepted")
	}
	s := fakeSources()
	s.userName = func() (string, error) { return "", errors.New("no user") }
	if _, err := fingerprint("fam1", s); err == nil || !strings.Contains(err.Error(), "no user") {
		t.Errorf("user name failure: %v", err)
	}
	s = fakeSources()
	s.hostname = func() (string, error) { return "", errors.New("no host") }
	if _, err := fingerprint("fam1", s); err == nil || !strings.Contains(err.Error(), "no host") {
		t.Errorf("host name failure: %v", err)
	}
}

// TestFingerprintThisMachine runs the real sources with the machine ID
// supplied, so that it passes on machines (and containers) without one.
func TestFingerprintThisMachine(t *testing.T) {
	a, err := Fingerprint("fam1", envWith("test-machine"))
	if err != nil {
		t.Fatalf("Fingerprint: %v", err)
	}
	b, err := Fingerprint("fam1", envWith("test-machine"))
	if err != nil || a != b || !hex64.MatchString(a) {
		t.Fatalf("Fingerprint = %q then %q, %v", a, b, err)
	}
	if _, err := osMachineID(); err != nil && !errors.Is(err, ErrNoMachineID) {
		t.Errorf("osMachineID: %v, want an ID or ErrNoMachineID", err)
	}
}

func TestParseIOPlatformUUID(t *testing.T) {
	out := `+-o MacBookPro18,3  <class IOPlatformExpertDevice, id 0x100000110, registered>
    {
      "IOPlatformSerialNumber" = "C02XXXXXXX"
      "IOPlatformUUID" = "6A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9"
      "IOPolledInterface" = "AppleARMWatchdogTimerHibernateHandler is not serializable"
    }
`
	id, ok := parseIOPlatformUUID([]byte(out))
	if !ok || id != "6A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9" {
		t.Errorf("parseIOPlatformUUID = %q, %v", id, ok)
	}
	for _, bad := range []string{"", `"IOPlatformSerialNumber" = "x"`, `"IOPlatformUUID" = ""`} {
		if id, ok := parseIOPlatformUUID([]byte(bad)); ok {
			t.Errorf("parseIOPlatformUUID(%q) = %q, want not found", bad, id)
		}
	}
}
