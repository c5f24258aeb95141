//go:build linux

package fault

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgServer is a real PostgreSQL server of one scenario, started from the
// Debian postgresql package's binaries (as the postgres user when the test
// runs as root: PostgreSQL refuses root) in a directory of its own. It
// listens on a unix socket only (listen_addresses = ”), in a directory every
// process on the machine reaches whatever its network namespace, so the
// nodes, each in its own namespace, and the test process all reach it and no
// TCP port is used. The scenario stops it (pg_ctl stop -m fast or -m
// immediate) and starts it again while the nodes run.
//
// Settings: fsync off (the machine does not crash, only the server does),
// but synchronous_commit on, so a commit the server answered is in the WAL
// it replays after an immediate stop.
type pgServer struct {
	bin  string // /usr/lib/postgresql/N/bin
	dir  string // removed by close
	data string
	sock string // the unix socket's directory
	port int    // names the socket (.s.PGSQL.PORT); no TCP
	cred *syscall.Credential
	logf func(string, ...any)

	mu      sync.Mutex
	running bool
	// alive is the write end of the watchdog's pipe: when this process ends,
	// however it ends, the watchdog stops the server and removes dir.
	alive *os.File
}

// pgRoleName is the practice's role: it owns the practice databases; ppsync
// and the practice software both log in as it (trust on the unix socket).
const pgRoleName = "clinic"

// pgBinDir finds the newest /usr/lib/postgresql/*/bin holding initdb ("" if
// none).
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

// startPGServer initializes a cluster and starts it; the error wraps ErrSkip
// when this machine has no PostgreSQL server binaries (or, as root, no
// postgres user to run them as).
func startPGServer(ctx context.Context, logf func(string, ...any)) (s *pgServer, err error) {
	bin := pgBinDir()
	if bin == "" {
		return nil, fmt.Errorf("%w: no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): install Debian's postgresql package", ErrSkip)
	}
	s = &pgServer{bin: bin, port: 5432, logf: logf}
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("%w: running as root and there is no postgres user to run PostgreSQL as", ErrSkip)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// Not under the test's temporary directory: its parents are closed to
	// the postgres user. The socket's path must stay short (108 bytes).
	if s.dir, err = os.MkdirTemp("", "ppsync-fault-pg-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	s.data, s.sock = filepath.Join(s.dir, "data"), filepath.Join(s.dir, "sock")
	if err := os.Mkdir(s.sock, 0o755); err != nil {
		return s, err
	}
	if s.cred != nil {
		for _, p := range []string{s.dir, s.sock} {
			if err := os.Chown(p, uid, gid); err != nil {
				return s, err
			}
		}
	}
	if err := s.run(ctx, "initdb", "-D", s.data, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"); err != nil {
		return s, err
	}
	conf := fmt.Sprintf("listen_addresses = ''\nunix_socket_directories = '%s'\nport = %d\nfsync = off\nfull_page_writes = off\nmax_connections = 100\nshared_buffers = 32MB\nlog_min_messages = warning\n", s.sock, s.port)
	f, err := os.OpenFile(filepath.Join(s.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return s, err
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return s, err
	}
	if err := os.WriteFile(filepath.Join(s.data, "pg_hba.conf"), []byte("local all all trust\n"), 0o600); err != nil {
		return s, err
	}
	if s.cred != nil {
		if err := os.Chown(filepath.Join(s.data, "pg_hba.conf"), uid, gid); err != nil {
			return s, err
		}
	}
	if err := s.watchdog(); err != nil {
		return s, err
	}
	if err := s.start(ctx); err != nil {
		return s, err
	}
	c, err := s.connect(ctx, "postgres", "postgres")
	if err != nil {
		return s, err
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, `CREATE ROLE `+pgRoleName+` LOGIN`); err != nil {
		return s, fmt.Errorf("fault: create the practice's role: %w", err)
	}
	return s, nil
}

// watchdog starts a shell that waits on a pipe whose only writer is this
// process, then stops the server and removes its directory.
func (s *pgServer) watchdog() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command("/bin/sh", "-c", fmt.Sprintf("read _; %s stop -D %s -m immediate >/dev/null 2>&1; rm -rf %s",
		filepath.Join(s.bin, "pg_ctl"), s.data, s.dir))
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: s.cred} // pg_ctl refuses root
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	go func() { _ = cmd.Wait() }()
	s.alive = w
	return nil
}

// run runs one of the server's programs as the server's user.
func (s *pgServer) run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("fault: %s %v: %v: %s", name, args, err, out)
	}
	return nil
}

// start starts the server and waits until it accepts connections (after an
// immediate stop, once its crash recovery is done).
func (s *pgServer) start(ctx context.Context) error {
	if err := s.run(ctx, "pg_ctl", "start", "-w", "-t", "60", "-D", s.data, "-l", filepath.Join(s.dir, "server.log")); err != nil {
		return err
	}
	s.mu.Lock()
	s.running = true
	s.mu.Unlock()
	return nil
}

// stop stops the server with pg_ctl stop -m mode (fast: every session is
// ended and its transaction rolled back, then a checkpoint; immediate: every
// process quits at once, and the next start recovers from the WAL).
func (s *pgServer) stop(ctx context.Context, mode string) error {
	s.mu.Lock()
	s.running = false
	s.mu.Unlock()
	return s.run(ctx, "pg_ctl", "stop", "-w", "-t", "60", "-D", s.data, "-m", mode)
}

// close stops the server (if it runs) and removes its directory.
func (s *pgServer) close() {
	s.mu.Lock()
	running := s.running
	s.running = false
	s.mu.Unlock()
	if running {
		_ = s.run(context.Background(), "pg_ctl", "stop", "-w", "-D", s.data, "-m", "immediate")
	}
	if s.alive != nil {
		s.alive.Close() // the watchdog finds the server stopped and removes dir
		s.alive = nil
	} else if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// url is the address of database name for ppsync and the writers: the
// practice's role over the unix socket.
func (s *pgServer) url(name string) string {
	q := url.Values{}
	q.Set("host", s.sock)
	q.Set("port", strconv.Itoa(s.port))
	q.Set("sslmode", "disable")
	return "postgres://" + pgRoleName + "@/" + name + "?" + q.Encode()
}

// connConfig is a connection to database name as role, with fixed session
// settings so that every value's text is the same in every session.
func (s *pgServer) connConfig(role, name string) (*pgx.ConnConfig, error) {
	q := url.Values{}
	q.Set("host", s.sock)
	q.Set("port", strconv.Itoa(s.port))
	q.Set("sslmode", "disable")
	q.Set("connect_timeout", "5")
	cfg, err := pgx.ParseConfig("postgres://" + role + "@/" + name + "?" + q.Encode())
	if err != nil {
		return nil, err
	}
	for k, v := range map[string]string{"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
		"extra_float_digits": "3", "bytea_output": "hex", "application_name": "fault-harness"} {
		cfg.RuntimeParams[k] = v
	}
	return cfg, nil
}

func (s *pgServer) connect(ctx context.Context, role, name string) (*pgx.Conn, error) {
	cfg, err := s.connConfig(role, name)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// createDB creates database name owned by the practice's role.
func (s *pgServer) createDB(ctx context.Context, name string) error {
	c, err := s.connect(ctx, "postgres", "postgres")
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, `CREATE DATABASE `+name+` OWNER `+pgRoleName)
	return err
}
