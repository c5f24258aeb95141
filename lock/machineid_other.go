//go:build !linux && !windows && !darwin

package lock

import "runtime"

func osMachineID() (string, error) {
	return "", noMachineID("ppsync cannot read the machine ID on " + runtime.GOOS)
}
