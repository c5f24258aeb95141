package lock

import (
	"errors"
	"fmt"

	"golang.org/x/sys/windows/registry"
)

const (
	cryptographyKey = `SOFTWARE\Microsoft\Cryptography`
	machineGUID     = "MachineGuid"
)

// osMachineID reads HKLM\SOFTWARE\Microsoft\Cryptography\MachineGuid from the
// 64-bit registry view, so that 32- and 64-bit builds agree.
func osMachineID() (string, error) {
	k, err := registry.OpenKey(registry.LOCAL_MACHINE, cryptographyKey, registry.QUERY_VALUE|registry.WOW64_64KEY)
	if errors.Is(err, registry.ErrNotExist) {
		return "", noMachineID(`the registry has no HKLM\` + cryptographyKey)
	}
	if err != nil {
		return "", fmt.Errorf(`open HKLM\%s: %w`, cryptographyKey, err)
	}
	defer k.Close()
	id, _, err := k.GetStringValue(machineGUID)
	if errors.Is(err, registry.ErrNotExist) || (err == nil && id == "") {
		return "", noMachineID(`the registry has no HKLM\` + cryptographyKey + `\` + machineGUID)
	}
	if err != nil {
		return "", fmt.Errorf(`read HKLM\%s\%s: %w`, cryptographyKey, machineGUID, err)
	}
	return id, nil
}
