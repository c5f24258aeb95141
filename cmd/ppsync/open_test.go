package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/node/api"
	"github.com/ppsync/ppsync/node/web"
)

// fakeLinkNode serves POST /v1/login-token like a node, for a data directory
// whose runtime.json and api.key point at it.
func fakeLinkNode(t *testing.T) (data string, asked *int) {
	t.Helper()
	asked = new(int)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if answerHello(w, r, "k3y") {
			return
		}
		if r.Method != "POST" || r.URL.Path != "/v1/login-token" || r.Header.Get("Authorization") != "Bearer k3y" {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"missing or wrong API key","code":"unauthorized"}`))
			return
		}
		*asked++
		json.NewEncoder(w).Encode(api.LoginLink{URL: "http://" + r.Host + "/?token=T0KEN", Expires: time.Now().Add(web.LoginTokenTTL)})
	}))
	t.Cleanup(srv.Close)
	data = t.TempDir()
	rt, _ := json.Marshal(api.Runtime{PID: os.Getpid(), API: srv.URL})
	if err := os.WriteFile(filepath.Join(data, node.RuntimeFile), rt, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, node.APIKeyFile), []byte("k3y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return data, asked
}

func TestOpenPrintsALoginLink(t *testing.T) {
	data, asked := fakeLinkNode(t)
	var opened []string
	old := openBrowser
	openBrowser = func(url string) error { opened = append(opened, url); return nil }
	t.Cleanup(func() { openBrowser = old })

	r := ppsync(t, "", nil, "open", "--data", data)
	r.want(t, exitOK)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "within 2 minutes") || !strings.HasPrefix(lines[1], "http://127.0.0.1:") || !strings.HasSuffix(lines[1], "/?token=T0KEN") {
		t.Fatalf("open printed %q", r.stdout)
	}
	if len(opened) != 0 {
		t.Fatal("open started a browser without --browser")
	}

	r = ppsync(t, "", nil, "open", "--data", data, "--browser", "--json")
	r.want(t, exitOK)
	var l api.LoginLink
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil || !strings.HasSuffix(l.URL, "/?token=T0KEN") || l.Expires.IsZero() {
		t.Fatalf("open --json printed %q (%v)", r.stdout, err)
	}
	if len(opened) != 1 || opened[0] != l.URL {
		t.Fatalf("browser opened %v", opened)
	}
	if *asked != 2 {
		t.Fatalf("the node was asked %d times", *asked)
	}

	// A browser that cannot start: the link is still printed, with a note.
	openBrowser = func(string) error { return errors.New("no display") }
	r = ppsync(t, "", nil, "open", "--data", data, "--browser")
	r.want(t, exitOK, "could not start a browser (no display)")
	if !strings.Contains(r.stdout, "/?token=T0KEN") {
		t.Fatalf("open printed %q", r.stdout)
	}
}

func TestOpenErrors(t *testing.T) {
	ppsync(t, "", nil, "open").want(t, exitUsage, "--data")
	ppsync(t, "", nil, "open", "--data", t.TempDir()).want(t, exitNotRunning)
	data, _ := fakeLinkNode(t)
	os.WriteFile(filepath.Join(data, node.APIKeyFile), []byte("wrong\n"), 0o600)
	ppsync(t, "", nil, "open", "--data", data).want(t, exitError, "API key")
	r := ppsync(t, "", nil, "help", "open")
	r.want(t, exitOK)
	if !strings.Contains(r.stdout, "--browser") || !strings.Contains(r.stdout, "works once") {
		t.Fatalf("help open: %q", r.stdout)
	}
}
