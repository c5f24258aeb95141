//go:build unix

package main

import (
	"os"
	"syscall"
)

// ownLike gives path the owner and group of ref, when they differ (which
// only root may do; a user who owns both changes nothing).
func ownLike(path, ref string) error {
	rf, err := os.Stat(ref)
	if err != nil {
		return err
	}
	pf, err := os.Lstat(path)
	if err != nil {
		return err
	}
	rs, ok1 := rf.Sys().(*syscall.Stat_t)
	ps, ok2 := pf.Sys().(*syscall.Stat_t)
	if !ok1 || !ok2 || (rs.Uid == ps.Uid && rs.Gid == ps.Gid) {
		return nil
	}
	return os.Lchown(path, int(rs.Uid), int(rs.Gid))
}
