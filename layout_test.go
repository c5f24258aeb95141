package ppsync

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/ppsync/ppsync"

type pkgInfo struct {
	ImportPath string
	Doc        string
	Imports    []string
	Deps       []string
}

func listPackages(t *testing.T) []pkgInfo {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "-deps=false", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkgInfo
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkgInfo
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// layer returns the top-level component of a package of this module: "cmd",
// "node", "mesh", "txlog", "state", "lock", "family", "internal", "integration".
func layer(path string) string {
	rest := strings.TrimPrefix(strings.TrimPrefix(path, module), "/")
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[:i]
	}
	return rest
}

// allowed lists, per layer, the layers of this module it may depend on
// (directly or not): cmd -> node -> {mesh, txlog, state, lock, family} -> internal.
var allowed = map[string][]string{
	"cmd":         {"node", "family", "mesh", "txlog", "state", "lock", "db", "alert", "notify", "internal"},
	"node":        {"mesh", "txlog", "state", "lock", "family", "db", "alert", "notify", "internal"},
	"db":          {"db", "internal"},
	"alert":       {"internal"},
	"notify":      {"internal"},
	"mesh":        {"internal"},
	"txlog":       {"internal"},
	"state":       {"internal"},
	"lock":        {"internal"},
	"family":      {"internal"},
	"internal":    {"internal"},
	"integration": {"cmd", "node", "mesh", "txlog", "state", "lock", "family", "db", "alert", "notify", "internal"},
	"":            {"cmd", "node", "mesh", "txlog", "state", "lock", "family", "db", "alert", "notify", "internal", "integration"},
}

// directAllowed restricts what cmd may import directly: node, and family for
// offline administration (plus internal helpers).
var directAllowed = map[string][]string{
	"cmd": {"node", "family", "internal"},
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestImportRule enforces DESIGN.md's direction of imports with go list -deps,
// and that no production package links the testing package.
func TestImportRule(t *testing.T) {
	for _, p := range listPackages(t) {
		from := layer(p.ImportPath)
		ok, known := allowed[from]
		if !known {
			t.Errorf("%s: top-level directory %q is not in the layout of DESIGN.md; add it to the rule", p.ImportPath, from)
			continue
		}
		for _, d := range p.Deps {
			if d == "testing" && from != "integration" {
				t.Errorf("%s links the testing package (production code must not)", p.ImportPath)
			}
			if !strings.HasPrefix(d, module+"/") {
				continue
			}
			to := layer(d)
			if to == from && from != "internal" {
				continue
			}
			if !contains(ok, to) {
				t.Errorf("%s depends on %s: %s may not depend on %s", p.ImportPath, d, from, to)
			}
		}
		if direct, ok := directAllowed[from]; ok {
			for _, d := range p.Imports {
				if strings.HasPrefix(d, module+"/") && layer(d) != from && !contains(direct, layer(d)) {
					t.Errorf("%s imports %s directly; %s may import only %v", p.ImportPath, d, from, direct)
				}
			}
		}
	}
}

// TestEveryPackageHasDoc checks that every package has a package doc comment.
func TestEveryPackageHasDoc(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.ImportPath == module {
			continue // the root holds only this test and the tools file
		}
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment", p.ImportPath)
		}
	}
}

// TestEngineIsPure keeps node/engine a pure state machine: it depends on no
// networking, storage or process-level package of this module or outside it
// (go list -deps), and none of its files reads the clock, sets a timer,
// sleeps, takes a lock or starts a goroutine (a scan of its source). The
// standard library's net, os and sync reach it only through internal/wire
// (its msgpack codec links them); the engine adds none of its own.
func TestEngineIsPure(t *testing.T) {
	const pkg = module + "/node/engine"
	deps := func(p string) []string {
		out, err := exec.Command("go", "list", "-deps", p).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", p, err)
		}
		return strings.Fields(string(out))
	}
	under := func(d, prefix string) bool { return d == prefix || strings.HasPrefix(d, prefix+"/") }
	viaWire := map[string]bool{}
	for _, d := range deps(module + "/internal/wire") {
		viaWire[d] = true
	}
	for _, d := range deps(pkg) {
		for _, f := range []string{module + "/mesh", module + "/txlog", module + "/state", module + "/lock", module + "/db",
			"github.com/libp2p", "github.com/cockroachdb/pebble", "github.com/cockroachdb/pebble/v2"} {
			if under(d, f) {
				t.Errorf("%s depends on %s", pkg, d)
			}
		}
		for _, f := range []string{"net", "os", "sync"} {
			if under(d, f) && !viaWire[d] {
				t.Errorf("%s depends on %s (not through internal/wire)", pkg, d)
			}
		}
	}
	files, err := filepath.Glob(filepath.Join("node", "engine", "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no source in node/engine (%v)", err)
	}
	calls := map[string]bool{"Now": true, "Since": true, "Until": true, "NewTimer": true, "NewTicker": true,
		"After": true, "AfterFunc": true, "Tick": true, "Sleep": true}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if p := strings.Trim(imp.Path.Value, `"`); p == "sync" || p == "sync/atomic" {
				t.Errorf("%s imports %s", name, p)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.GoStmt:
				t.Errorf("%s: starts a goroutine", fset.Position(n.Pos()))
			case *ast.SelectorExpr:
				if x, ok := n.X.(*ast.Ident); ok && x.Name == "time" && calls[n.Sel.Name] {
					t.Errorf("%s: calls time.%s (the engine takes the time from its inputs)", fset.Position(n.Pos()), n.Sel.Name)
				}
			}
			return true
		})
	}
}

// depsOf lists the packages pkg depends on, directly or not (go list -deps).
func depsOf(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}}", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// TestNodeSubpackages keeps node's parts to their jobs: node/api (the API's
// types and the client) links the standard library only; node/web (the sync
// page) links no storage and no network library; node/datadir (the data
// directory) knows nothing of the mesh, the state or the log.
func TestNodeSubpackages(t *testing.T) {
	heavy := []string{"github.com/cockroachdb/pebble", "github.com/libp2p/"}
	for _, pkg := range []string{module + "/node/api", module + "/node/web"} {
		for _, line := range depsOf(t, pkg) {
			path, std, _ := strings.Cut(line, " ")
			for _, h := range heavy {
				if strings.HasPrefix(path, h) {
					t.Errorf("%s depends on %s", pkg, path)
				}
			}
			if pkg == module+"/node/api" && std != "true" && path != pkg {
				t.Errorf("%s depends on %s: it may use the standard library only", pkg, path)
			}
		}
	}
	for _, line := range depsOf(t, module+"/node/datadir") {
		path, _, _ := strings.Cut(line, " ")
		for _, no := range []string{"mesh", "state", "txlog"} {
			if path == module+"/"+no || strings.HasPrefix(path, module+"/"+no+"/") {
				t.Errorf("node/datadir depends on %s", path)
			}
		}
	}
}
