package lock

import (
	"errors"
	"os"
	"strings"
)

// osMachineID reads the machine ID where systemd, then D-Bus, keep it.
func osMachineID() (string, error) {
	return readMachineID(os.ReadFile, []string{"/etc/machine-id", "/var/lib/dbus/machine-id"})
}

// readMachineID returns the first usable machine ID among files. An empty
// file or systemd's "uninitialized" placeholder does not count.
func readMachineID(readFile func(string) ([]byte, error), files []string) (string, error) {
	for _, name := range files {
		b, err := readFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if id := strings.TrimSpace(string(b)); id != "" && id != "uninitialized" {
			return id, nil
		}
	}
	return "", noMachineID("neither " + strings.Join(files, " nor ") + " holds a machine ID")
}
