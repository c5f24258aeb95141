package main

import (
	"bytes"
	"strings"
	"testing"
)

// result is one run of the command line.
type result struct {
	code           int
	stdout, stderr string
}

// ppsync runs the command line with stdin and the given environment.
func ppsync(t *testing.T, stdin string, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut, func(k string) string { return env[k] })
	return result{code, out.String(), errOut.String()}
}

// want checks the exit code and that stderr holds at most one line, which
// contains each of the given fragments.
func (r result) want(t *testing.T, code int, stderrHas ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	if n := strings.Count(r.stderr, "\n"); n > 1 {
		t.Errorf("stderr has %d lines, want at most one:\n%s", n, r.stderr)
	}
	for _, s := range stderrHas {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr %q does not contain %q", r.stderr, s)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		has  []string
	}{
		{nil, []string{"no command given", "`ppsync help`"}},
		{[]string{"frobnicate"}, []string{`unknown command "frobnicate"`, "ppsync help"}},
		{[]string{"put", "--data", "d", "t", "k"}, []string{"ppsync put: needs TABLE KEY JSON_OBJECT (got 2 arguments)", "`ppsync help put`"}},
		{[]string{"put", "--data", "d", "t", "k", "{}", "extra"}, []string{`"extra" is one argument too many`}},
		{[]string{"put", "t", "k", "{}"}, []string{"needs --data DATA"}},
		{[]string{"get", "--bogus", "d", "t", "k"}, []string{"flag provided but not defined: -bogus", "ppsync help get"}},
		{[]string{"get", "--data", "d", "", "k"}, []string{"TABLE is empty"}},
		{[]string{"status", "--data"}, []string{"flag needs an argument"}},
		{[]string{"status", "--data", "d", "extra"}, []string{"takes no arguments"}},
		{[]string{"family"}, []string{"needs a subcommand", "ppsync help family"}},
		{[]string{"family", "adopt"}, []string{`unknown subcommand "adopt"`}},
		{[]string{"family", "create", "--dir", "x"}, []string{"ppsync family create: needs --name", "`ppsync help family create`"}},
		{[]string{"family", "admit", "--dir", "x", "--request", "r"}, []string{"needs --out"}},
		{[]string{"init", "--data", "d", "--family", "f", "--site", "s", "--role", "boss"}, []string{"--role is \"boss\""}},
		{[]string{"run", "--data", "d", "--log-format", "xml"}, []string{"--log-format"}},
		{[]string{"run", "--data", "d", "--log-level", "loud"}, []string{"--log-level"}},
		{[]string{"set", "--data", "d", "colour", "blue"}, []string{`unknown setting "colour"`, "sync-interval", "connectivity-check", "log-level"}},
		{[]string{"set", "--data", "d", "sync-interval", "soon"}, []string{"not a positive duration"}},
		{[]string{"set", "--data", "d", "sync-interval", "0s"}, []string{"not a positive duration"}},
		{[]string{"set", "--data", "d", "sync-interval"}, []string{"needs SETTING VALUE"}},
		{[]string{"set", "--data", "d", "connectivity-check", "maybe"}, []string{"on or off"}},
		{[]string{"log", "--data", "d", "--limit", "0"}, []string{"--limit"}},
		{[]string{"sync-now", "--data", "d", "--wait", "a while"}, []string{"invalid value"}},
		{[]string{"demo", "--dir", "x", "extra"}, []string{"takes no arguments"}},
		{[]string{"help", "frobnicate"}, []string{`unknown command "frobnicate"`}},
		{[]string{"version", "extra"}, []string{"takes no arguments"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := ppsync(t, "", nil, tc.args...)
			r.want(t, exitUsage, tc.has...)
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	r := ppsync(t, "", nil, "help")
	r.want(t, exitOK)
	for _, name := range []string{"family admit", "init", "install", "run", "put", "import", "status", "peers", "sync-now", "verify", "demo"} {
		if !strings.Contains(r.stdout, "  "+name+" ") {
			t.Errorf("help does not list %q", name)
		}
	}
	r = ppsync(t, "", nil, "help", "put")
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, "Usage: ppsync put --data DATA TABLE KEY JSON_OBJECT") || !strings.Contains(r.stdout, "--data DATA") {
		t.Errorf("help put:\n%s", r.stdout)
	}
	r = ppsync(t, "", nil, "help", "family", "admit")
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, "--request REQ_JSON") {
		t.Errorf("help family admit:\n%s", r.stdout)
	}
	r = ppsync(t, "", nil, "import", "--help")
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, "--progress") {
		t.Errorf("import --help:\n%s", r.stdout)
	}
	ppsync(t, "", nil, "family", "--help").want(t, exitOK)
	ppsync(t, "", nil, "--help").want(t, exitOK)

	r = ppsync(t, "", nil, "version")
	r.want(t, exitOK)
	if first, _, _ := strings.Cut(r.stdout, "\n"); first != version {
		t.Errorf("version printed %q first, want %q", first, version)
	}
	if ppsync(t, "", nil, "--version").stdout != r.stdout {
		t.Error("--version differs from version")
	}
}

func TestNotRunning(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"status", "--data", dir},
		{"status", "--data", dir, "--json"},
		{"get", "--data", dir, "t", "k"},
		{"put", "--data", dir, "t", "k", `{"a":1}`},
		{"list", "t", "--data=" + dir},
		{"digest", "--data", dir},
		{"log", "--data", dir},
		{"conflicts", "--data", dir},
		{"set", "--data", dir, "sync-interval", "1m"},
	} {
		r := ppsync(t, "", nil, args...)
		r.want(t, exitNotRunning, "ppsync is not running on "+dir, "`ppsync run --data "+dir+"`")
		if r.stdout != "" {
			t.Errorf("%v printed %q", args, r.stdout)
		}
	}
	// $PPSYNC_DATA stands in for --data.
	ppsync(t, "", map[string]string{"PPSYNC_DATA": dir}, "status").want(t, exitNotRunning, dir)
	// A directory that does not exist.
	missing := dir + "/nothing"
	ppsync(t, "", nil, "status", "--data", missing).want(t, exitNotRunning, "does not exist", "ppsync init")
}

func TestPutRefusesBadFields(t *testing.T) {
	dir := t.TempDir() // no node: the fields are checked first
	for _, tc := range []struct{ fields, has string }{
		{`{"name":`, "not valid JSON"},
		{`name=Ada`, "not valid JSON"},
		{`["Ada"]`, "is an array"},
		{`"Ada"`, "is a string"},
		{`null`, "is null"},
		{`{"a":1} {"b":2}`, "more after the object"},
	} {
		r := ppsync(t, "", nil, "put", "--data", dir, "t", "k", tc.fields)
		r.want(t, exitError, tc.has, `the fields must be a JSON object like '{"name":"Ada"}'`)
	}
}

func TestMeshCommandsWithoutNode(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"peers", "--data", dir, "--json"},
		{"sync-now", "--data", dir, "--wait", "30s"},
	} {
		ppsync(t, "", nil, args...).want(t, exitNotRunning, "ppsync is not running on")
	}
	ppsync(t, "", nil, "sync-now", "--data", dir, "--wait", "2h").want(t, exitUsage, "--wait must be between 0 and 1h")
}

func TestDemoNoWait(t *testing.T) {
	r := ppsync(t, "", nil, "demo", "--dir", t.TempDir(), "--no-wait")
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, "All four nodes hold the same data") {
		t.Fatalf("demo output:\n%s", r.stdout)
	}
}

func TestParseArgsInterleaved(t *testing.T) {
	cmd := getCommand()
	c := &cli{}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--data", "d", "t", "k"}, "t|k"},
		{[]string{"--data=d", "t", "k"}, "t|k"},
		{[]string{"t", "k", "--data", "d"}, "t|k"},
		{[]string{"t", "--data", "d", "k"}, "t|k"},
		{[]string{"--data", "d", "t", "-5"}, "t|-5"},
		{[]string{"--data", "d", "--", "-t", "k"}, "-t|k"},
	} {
		fs := newFlagSet(cmd)
		pos, err := c.parseArgs(cmd, fs, tc.args, 2, 2, "TABLE KEY")
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if got := strings.Join(pos, "|"); got != tc.want || fs.Lookup("data").Value.String() != "d" {
			t.Errorf("%v: positional %q, --data %q; want %q", tc.args, got, fs.Lookup("data").Value, tc.want)
		}
	}
}
