//go:build windows

package datadir

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/windows"
)

// fileReadData is FILE_READ_DATA (FILE_LIST_DIRECTORY for a directory).
const fileReadData = 0x1

// readMask are the access rights that let a trustee read a file's content.
const readMask = fileReadData | windows.GENERIC_READ | windows.GENERIC_ALL

// broadGroups are the trustees that stand for other users of the machine.
var broadGroups = []struct {
	sid  windows.WELL_KNOWN_SID_TYPE
	name string
}{
	{windows.WinWorldSid, "Everyone"},
	{windows.WinBuiltinUsersSid, "Users"},
	{windows.WinAuthenticatedUserSid, "Authenticated Users"},
}

// exposure says which broad group may read path ("" when none): an allow
// entry of its access control list for Everyone, Users or Authenticated
// Users that includes reading.
func exposure(path string, _ os.FileInfo) (string, error) {
	sd, err := windows.GetNamedSecurityInfo(path, windows.SE_FILE_OBJECT, windows.DACL_SECURITY_INFORMATION)
	if err != nil {
		return "", err
	}
	dacl, _, err := sd.DACL()
	if err != nil || dacl == nil {
		return "no access control list: everyone may read it", nil
	}
	var who []string
	for i := uint32(0); i < uint32(dacl.AceCount); i++ {
		var ace *windows.ACCESS_ALLOWED_ACE
		if err := windows.GetAce(dacl, i, &ace); err != nil {
			return "", err
		}
		if ace.Header.AceType != windows.ACCESS_ALLOWED_ACE_TYPE || ace.Mask&readMask == 0 {
			continue
		}
		sid := (*windows.SID)(unsafe.Pointer(&ace.SidStart))
		for _, g := range broadGroups {
			if sid.IsWellKnown(g.sid) {
				who = append(who, g.name)
			}
		}
	}
	if len(who) == 0 {
		return "", nil
	}
	return "its access control list lets " + strings.Join(who, ", ") + " read it", nil
}

// fixCommand is the command that makes path private: ppsync init tightens
// the access control lists.
func fixCommand(path string, dir bool) string {
	inherit := ""
	if dir {
		inherit = "(OI)(CI)"
	}
	return `icacls "` + path + `" /inheritance:r /grant:r "%USERNAME%:` + inherit + `F" /grant:r "*S-1-5-32-544:` + inherit + `F"`
}

// restrict replaces path's access control list by one that lets only the
// current account and Administrators in, not inherited from the parent, and
// inherited by everything inside a directory.
func restrict(path string, info os.FileInfo, _ bool) (bool, error) {
	user, err := windows.GetCurrentProcessToken().GetTokenUser()
	if err != nil {
		return false, fmt.Errorf("find this account: %w", err)
	}
	admins, err := windows.CreateWellKnownSid(windows.WinBuiltinAdministratorsSid)
	if err != nil {
		return false, err
	}
	var pin runtime.Pinner
	defer pin.Unpin()
	pin.Pin(user.User.Sid)
	pin.Pin(admins)
	inherit := uint32(windows.NO_INHERITANCE)
	if info.IsDir() {
		inherit = windows.SUB_CONTAINERS_AND_OBJECTS_INHERIT
	}
	entry := func(sid *windows.SID, kind windows.TRUSTEE_TYPE) windows.EXPLICIT_ACCESS {
		return windows.EXPLICIT_ACCESS{AccessPermissions: windows.GENERIC_ALL, AccessMode: windows.SET_ACCESS, Inheritance: inherit,
			Trustee: windows.TRUSTEE{TrusteeForm: windows.TRUSTEE_IS_SID, TrusteeType: kind, TrusteeValue: windows.TrusteeValueFromSID(sid)}}
	}
	acl, err := windows.ACLFromEntries([]windows.EXPLICIT_ACCESS{entry(user.User.Sid, windows.TRUSTEE_IS_USER), entry(admins, windows.TRUSTEE_IS_GROUP)}, nil)
	if err != nil {
		return false, err
	}
	before, _ := exposure(path, info)
	err = windows.SetNamedSecurityInfo(path, windows.SE_FILE_OBJECT,
		windows.DACL_SECURITY_INFORMATION|windows.PROTECTED_DACL_SECURITY_INFORMATION, nil, nil, acl, nil)
	return before != "", err
}
