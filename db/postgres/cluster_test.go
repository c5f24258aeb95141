//go:build linux

package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The tests share one PostgreSQL cluster per test binary, started from the
// Debian postgresql package's binaries in a temporary directory, and give
// each test a fresh database.
var cluster struct {
	skip  string // why the tests are skipped, when they are
	port  int
	admin *pgxpool.Pool
	n     atomic.Int64
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	stop, err := startCluster()
	if err != nil {
		var s skipError
		if !errors.As(err, &s) {
			fmt.Fprintln(os.Stderr, "postgres tests: cannot start a PostgreSQL cluster:", err)
			return 1
		}
		cluster.skip = string(s)
	}
	if stop != nil {
		defer stop()
	}
	return m.Run()
}

type skipError string

func (s skipError) Error() string { return string(s) }

// pgBin finds the newest /usr/lib/postgresql/*/bin holding initdb.
func pgBin() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(dirs[i]))))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(dirs[j]))))
		return vi < vj
	})
	if len(dirs) == 0 {
		return ""
	}
	return filepath.Dir(dirs[len(dirs)-1])
}

func startCluster() (func(), error) {
	bin := pgBin()
	if bin == "" {
		return nil, skipError("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): install Debian's postgresql package")
	}
	// PostgreSQL refuses to run as root: then the cluster runs as postgres.
	var cred *syscall.Credential
	var uid, gid int = -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, skipError("running as root and there is no postgres user to run PostgreSQL as")
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	dir, err := os.MkdirTemp("", "ppsync-pgtest-")
	if err != nil {
		return nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "sock")
	if err := os.Mkdir(sock, 0o700); err != nil {
		cleanup()
		return nil, err
	}
	if cred != nil {
		for _, p := range []string{dir, sock} {
			if err := os.Chown(p, uid, gid); err != nil {
				cleanup()
				return nil, err
			}
		}
	}
	run := func(name string, args ...string) error {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Dir = dir
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", name, err, out)
		}
		return nil
	}
	if err := run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"); err != nil {
		cleanup()
		return nil, err
	}
	hba := "local all all trust\nhost all pwuser 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		cleanup()
		return nil, err
	}
	if cred != nil {
		_ = os.Chown(filepath.Join(data, "pg_hba.conf"), uid, gid)
	}
	port, err := freePort()
	if err != nil {
		cleanup()
		return nil, err
	}
	// A watchdog stops the cluster should this process die without its
	// cleanup (a panic, a test timeout).
	watch := exec.Command("/bin/sh", "-c", fmt.Sprintf("while [ -d /proc/%d ]; do sleep 1; done; %s stop -D %s -m immediate; rm -rf %s",
		os.Getpid(), filepath.Join(bin, "pg_ctl"), data, dir))
	if cred != nil {
		watch.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setsid: true}
	} else {
		watch.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	_ = watch.Start()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB", port, sock)
	if err := run("pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", filepath.Join(dir, "server.log"), "-o", opts); err != nil {
		if watch.Process != nil {
			_ = watch.Process.Kill()
			_ = watch.Wait()
		}
		cleanup()
		return nil, err
	}
	stop := func() {
		if watch.Process != nil {
			_ = watch.Process.Kill()
			_ = watch.Wait()
		}
		if cluster.admin != nil {
			cluster.admin.Close()
		}
		_ = run("pg_ctl", "stop", "-D", data, "-m", "immediate")
		cleanup()
	}
	cluster.port = port
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cluster.admin, err = pgxpool.New(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port))
	if err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// newDB creates a fresh database and returns its URL.
func newDB(t testing.TB) string {
	t.Helper()
	if cluster.skip != "" {
		t.Skip("PostgreSQL tests skipped: " + cluster.skip)
	}
	name := fmt.Sprintf("t%d", cluster.n.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cluster.admin.Exec(ctx, `CREATE DATABASE `+name); err != nil {
		t.Fatal(err)
	}
	return dbURL("postgres", name)
}

func dbURL(user, name string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", user, cluster.port, name)
}

// sqlConn opens a plain connection for the test's own SQL (the practice
// software's side).
func sqlConn(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func mustExec(t testing.TB, p execer, q string, args ...any) {
	t.Helper()
	if _, err := p.Exec(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}
