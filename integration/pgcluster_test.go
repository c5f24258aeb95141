//go:build linux

package integration

// A PostgreSQL cluster for the tests that sync a PostgreSQL practice
// database: started from the Debian postgresql package's binaries in a
// temporary directory the first time a test asks for it (sync.Once), shared
// by every test of the binary, each test with its own databases. TestMain
// (cli_helpers_test.go) is shared with every other test, so the cluster is
// stopped by a watchdog rather than by it: the watchdog waits on a pipe whose
// only writer is this process, so when the test binary exits, however it
// exits (a panic, a timeout, kill -9), it stops the cluster at once and
// removes its directory.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// pgRole is the practice's PostgreSQL role: it owns the practice databases
// and logs in with a password over TCP (scram-sha-256), as a real practice
// server asks. The admin role postgres is trusted on 127.0.0.1.
const (
	pgRole     = "clinic"
	pgPassword = "s3cret-Practice-pw"
)

var pgc struct {
	once  sync.Once
	skip  string // why the PostgreSQL tests are skipped
	err   error  // why the cluster could not start
	port  int
	admin *pgxpool.Pool
	// alive is the write end of the watchdog's pipe, held for the life of
	// the process (the watchdog stops the cluster when it closes).
	alive *os.File
}

// pgClusterPort starts the cluster the first time and returns its port;
// it skips the test when PostgreSQL's server binaries are not installed.
func pgClusterPort(tb testing.TB) int {
	tb.Helper()
	pgc.once.Do(func() {
		began := time.Now()
		pgc.err = startPGCluster()
		if pgc.err == nil {
			fmt.Fprintf(os.Stderr, "integration: PostgreSQL cluster on 127.0.0.1:%d started in %s\n", pgc.port, time.Since(began).Round(time.Millisecond))
		}
	})
	if pgc.skip != "" {
		tb.Skip("PostgreSQL tests skipped: " + pgc.skip)
	}
	if pgc.err != nil {
		tb.Fatalf("cannot start a PostgreSQL cluster: %v", pgc.err)
	}
	return pgc.port
}

// pgBinDir finds the newest /usr/lib/postgresql/*/bin holding initdb.
func pgBinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	version := func(p string) int {
		v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p))))
		return v
	}
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) < version(dirs[j]) })
	if len(dirs) == 0 {
		return ""
	}
	return filepath.Dir(dirs[len(dirs)-1])
}

func startPGCluster() error {
	bin := pgBinDir()
	if bin == "" {
		pgc.skip = "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): install Debian's postgresql package"
		return nil
	}
	// PostgreSQL refuses to run as root: then the cluster runs as postgres.
	var cred *syscall.Credential
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			pgc.skip = "running as root and there is no postgres user to run PostgreSQL as"
			return nil
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	dir, err := os.MkdirTemp("", "ppsync-e2e-pg-")
	if err != nil {
		return err
	}
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "sock")
	fail := func(err error) error {
		os.RemoveAll(dir)
		return err
	}
	if err := os.Mkdir(sock, 0o700); err != nil {
		return fail(err)
	}
	if cred != nil {
		for _, p := range []string{dir, sock} {
			if err := os.Chown(p, uid, gid); err != nil {
				return fail(err)
			}
		}
	}
	run := func(name string, args ...string) error {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Dir = dir
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", name, err, out)
		}
		return nil
	}
	if err := run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"); err != nil {
		return fail(err)
	}
	hba := "local all all trust\nhost all " + pgRole + " 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return fail(err)
	}
	if cred != nil {
		if err := os.Chown(filepath.Join(data, "pg_hba.conf"), uid, gid); err != nil {
			return fail(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	// The watchdog: `read` returns when the pipe's write end closes, which
	// happens when this process ends, whatever ends it.
	r, w, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	watch := exec.Command("/bin/sh", "-c", fmt.Sprintf("read _; %s stop -D %s -m immediate >/dev/null 2>&1; rm -rf %s",
		filepath.Join(bin, "pg_ctl"), data, dir))
	watch.Stdin = r
	watch.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setsid: true}
	if err := watch.Start(); err != nil {
		r.Close()
		w.Close()
		return fail(err)
	}
	r.Close()
	go watch.Wait() // reap it should it end first
	pgc.alive = w
	stop := func(err error) error {
		w.Close() // the watchdog stops the cluster and removes dir
		pgc.alive = nil
		return err
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB", port, sock)
	if err := run("pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", filepath.Join(dir, "server.log"), "-o", opts); err != nil {
		return stop(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgxpool.New(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port))
	if err != nil {
		return stop(err)
	}
	if _, err := admin.Exec(ctx, `CREATE ROLE `+pgRole+` LOGIN PASSWORD '`+pgPassword+`'`); err != nil {
		admin.Close()
		return stop(err)
	}
	pgc.port, pgc.admin = port, admin
	return nil
}

// pgDatabase creates database name, owned by the practice's role, and drops
// it when the test ends (after the test's nodes and connections, which
// were registered later). It returns the URL ppsync is given (no password).
func pgDatabase(tb testing.TB, name string) string {
	tb.Helper()
	port := pgClusterPort(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pgc.admin.Exec(ctx, `CREATE DATABASE `+name+` OWNER `+pgRole); err != nil {
		tb.Fatalf("CREATE DATABASE %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pgc.admin.Exec(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			tb.Errorf("DROP DATABASE %s: %v", name, err)
		}
	})
	return pgURL(port, name)
}

func pgURL(port int, name string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", pgRole, port, name)
}

// pgConn connects to url as the practice software does (the practice's role,
// with its password), closed when the test ends.
func pgConn(tb testing.TB, url string) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.ConnConfig.Password = pgPassword
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	return p
}
