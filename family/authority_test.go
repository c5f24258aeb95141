package family

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestCreateLoadRoundTrip(t *testing.T) {
	auth, info, dir := testFamily(t)

	sum := sha256.Sum256(info.AuthorityPublicKey)
	if want := hex.EncodeToString(sum[:]); info.FamilyID != want || auth.FamilyID() != want {
		t.Fatalf("family ID %s / %s, want %s", info.FamilyID, auth.FamilyID(), want)
	}
	if info.Name != "Riverside Dental" || !info.CreatedAt.Equal(t0) || info.Format != 1 {
		t.Fatalf("info = %+v", info)
	}

	auth2, info2, err := LoadAuthority(dir)
	if err != nil {
		t.Fatalf("LoadAuthority: %v", err)
	}
	if auth2.FamilyID() != auth.FamilyID() || !bytes.Equal(auth2.PublicKey(), auth.PublicKey()) {
		t.Fatal("loaded authority differs")
	}
	if !bytes.Equal(mustMarshal(t, info2), mustMarshal(t, info)) {
		t.Fatal("loaded info differs")
	}
	info3, err := LoadInfo(filepath.Join(dir, InfoFile))
	if err != nil {
		t.Fatalf("LoadInfo: %v", err)
	}
	if info3.FamilyID != info.FamilyID {
		t.Fatal("LoadInfo family ID differs")
	}

	// Signing with the loaded key verifies against the created info.
	c, err := auth2.issue(testRequest(t, info, "clinic-a", RoleSite), 1, 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Verify(info); err != nil {
		t.Fatalf("Verify: %v", err)
	}

	if runtime.GOOS != "windows" {
		for name, want := range map[string]os.FileMode{AuthorityKeyFile: 0o600, InfoFile: 0o644} {
			st, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Mode().Perm(); got != want {
				t.Errorf("%s mode = %o, want %o", name, got, want)
			}
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("dir holds %d entries, want 2 (no temporary files)", len(entries))
	}
}

func TestCreateFamilyRefusals(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(dir string)
		family  string
		target  error
		frag    string
	}{
		{"key exists", func(dir string) { os.WriteFile(filepath.Join(dir, AuthorityKeyFile), []byte("x"), 0o600) }, "n", ErrConflict, "a family already exists in"},
		{"info exists", func(dir string) { os.WriteFile(filepath.Join(dir, InfoFile), []byte("x"), 0o600) }, "n", ErrConflict, "a family already exists in"},
		{"empty name", func(string) {}, "", ErrFormat, "family name is empty"},
		{"control char", func(string) {}, "a\nb", ErrFormat, "control character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.prepare(dir)
			_, _, err := CreateFamily(dir, tt.family, t0)
			wantErr(t, err, tt.target, tt.frag)
		})
	}

	// A second create in the same directory refuses and keeps the first key.
	_, _, dir := testFamily(t)
	before, _ := os.ReadFile(filepath.Join(dir, AuthorityKeyFile))
	_, _, err := CreateFamily(dir, "again", t0)
	wantErr(t, err, ErrConflict, dir)
	after, _ := os.ReadFile(filepath.Join(dir, AuthorityKeyFile))
	if !bytes.Equal(before, after) {
		t.Fatal("authority.key changed")
	}
}

func TestLoadAuthorityRefusals(t *testing.T) {
	_, _, dirA := testFamily(t)
	_, _, dirB := testFamily(t)
	keyB, _ := os.ReadFile(filepath.Join(dirB, AuthorityKeyFile))
	infoA, _ := os.ReadFile(filepath.Join(dirA, InfoFile))

	tests := []struct {
		name   string
		edit   func(t *testing.T, dir string)
		target error
		frag   string
	}{
		{"key of another family", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, AuthorityKeyFile), keyB, 0o600)
		}, ErrWrongFamily, "belongs to family"},
		{"missing key", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, AuthorityKeyFile))
		}, nil, "not the family's authority directory"},
		{"family id altered", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, InfoFile), editJSON(t, infoA, func(m map[string]any) {
				m["family_id"] = strings.Repeat("ab", 32)
			}), 0o644)
		}, ErrFormat, "does not match the authority key"},
		{"damaged key", func(t *testing.T, dir string) {
			data, _ := os.ReadFile(filepath.Join(dir, AuthorityKeyFile))
			os.WriteFile(filepath.Join(dir, AuthorityKeyFile), editJSON(t, data, func(m map[string]any) {
				raw, _ := base64.StdEncoding.DecodeString(m["private_key"].(string))
				raw[40] ^= 1
				m["private_key"] = base64.StdEncoding.EncodeToString(raw)
			}), 0o600)
		}, ErrFormat, "damaged"},
		{"key format 2", func(t *testing.T, dir string) {
			data, _ := os.ReadFile(filepath.Join(dir, AuthorityKeyFile))
			os.WriteFile(filepath.Join(dir, AuthorityKeyFile), editJSON(t, data, func(m map[string]any) { m["format"] = 2 }), 0o600)
		}, ErrFormat, "newer ppsync"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, dir := testFamily(t)
			tt.edit(t, dir)
			_, _, err := LoadAuthority(dir)
			if err == nil {
				t.Fatal("LoadAuthority succeeded")
			}
			if tt.target != nil {
				wantErr(t, err, tt.target, tt.frag)
			} else if !strings.Contains(err.Error(), tt.frag) {
				t.Fatalf("error %q does not mention %q", err, tt.frag)
			}
		})
	}
}

func TestAuthorityNeverPrintsKey(t *testing.T) {
	auth, _, dir := testFamily(t)
	secrets := []string{
		base64.StdEncoding.EncodeToString(auth.priv),
		base64.StdEncoding.EncodeToString(auth.priv.Seed()),
		hex.EncodeToString(auth.priv.Seed()),
		fmt.Sprint([]byte(auth.priv.Seed())),
	}
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%d", "%q"} {
		fmt.Fprintf(&out, verb+"\n", auth)
		fmt.Fprintf(&out, verb+"\n", *auth)
	}
	slog.New(slog.NewJSONHandler(&out, nil)).Info("loaded", "authority", auth)
	slog.New(slog.NewTextHandler(&out, nil)).Info("loaded", "authority", auth)
	for _, s := range secrets {
		if strings.Contains(out.String(), s) {
			t.Fatalf("output leaks the key:\n%s", out.String())
		}
	}
	if !strings.Contains(out.String(), auth.FamilyID()) {
		t.Fatalf("output does not name the family:\n%s", out.String())
	}

	// An error about a damaged key file quotes none of it.
	path := filepath.Join(dir, AuthorityKeyFile)
	data, _ := os.ReadFile(path)
	bad := bytes.Replace(data, []byte(`"private_key": "`), []byte(`"private_key": 1234567`), 1)
	os.WriteFile(path, bad, 0o600)
	_, _, err := LoadAuthority(dir)
	if err == nil || strings.Contains(err.Error(), secrets[0][:12]) {
		t.Fatalf("error = %v", err)
	}
}

func testPeerID(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestAddBootstrap(t *testing.T) {
	id := testPeerID(t).String()
	relay := "/ip4/203.0.113.7/tcp/4001/p2p/" + id
	tests := []struct {
		name  string
		addrs []string
		want  []string
		fail  string // fragment of the error for the last address
	}{
		{"one", []string{relay}, []string{relay}, ""},
		{"duplicate", []string{relay, relay}, []string{relay}, ""},
		{"ipfs alias is a duplicate", []string{relay, "/ip4/203.0.113.7/tcp/4001/ipfs/" + id}, []string{relay}, ""},
		{"two", []string{relay, "/dns4/relay.example.com/udp/4001/quic-v1/p2p/" + id}, []string{relay, "/dns4/relay.example.com/udp/4001/quic-v1/p2p/" + id}, ""},
		{"empty", []string{""}, nil, "empty"},
		{"not a multiaddr", []string{"relay.example.com:4001"}, nil, "not a multiaddr"},
		{"no peer id", []string{"/ip4/203.0.113.7/tcp/4001"}, nil, "/p2p/PEER_ID"},
		{"no transport", []string{"/p2p/" + id}, nil, "no transport"},
		{"bad peer id", []string{"/ip4/203.0.113.7/tcp/4001/p2p/notapeer"}, nil, "not a multiaddr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, info, dir := testFamily(t)
			var err error
			for _, a := range tt.addrs {
				err = info.AddBootstrap(a)
			}
			if tt.fail != "" {
				wantErr(t, err, ErrFormat, tt.fail)
				return
			}
			wantErr(t, err, nil)
			path := filepath.Join(dir, InfoFile)
			if err := SaveInfo(path, info); err != nil {
				t.Fatalf("SaveInfo: %v", err)
			}
			got, err := LoadInfo(path)
			if err != nil {
				t.Fatalf("LoadInfo: %v", err)
			}
			if fmt.Sprint(got.Bootstrap) != fmt.Sprint(tt.want) {
				t.Fatalf("bootstrap = %v, want %v", got.Bootstrap, tt.want)
			}
			if runtime.GOOS != "windows" {
				st, _ := os.Stat(path)
				if st.Mode().Perm() != 0o644 {
					t.Errorf("mode %o", st.Mode().Perm())
				}
			}
		})
	}
}

func TestSaveInfoRefusesInvalid(t *testing.T) {
	_, info, dir := testFamily(t)
	info.Name = ""
	wantErr(t, SaveInfo(filepath.Join(dir, "x.json"), info), ErrFormat, "name")
	if _, err := os.Stat(filepath.Join(dir, "x.json")); !os.IsNotExist(err) {
		t.Fatal("invalid info was written")
	}
}
