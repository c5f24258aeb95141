package lock

import (
	"fmt"
	"os/exec"
)

// ioreg is at this path on every macOS; the absolute path does not depend on
// the PATH of a launchd service.
const ioreg = "/usr/sbin/ioreg"

// osMachineID reads the hardware UUID (IOPlatformUUID) through ioreg.
func osMachineID() (string, error) {
	out, err := exec.Command(ioreg, "-rd1", "-c", "IOPlatformExpertDevice").Output()
	if err != nil {
		return "", noMachineID(fmt.Sprintf("running %s failed: %v", ioreg, err))
	}
	id, ok := parseIOPlatformUUID(out)
	if !ok {
		return "", noMachineID("ioreg reports no IOPlatformUUID")
	}
	return id, nil
}
