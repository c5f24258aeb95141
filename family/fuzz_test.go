package family

import (
	"bytes"
	"testing"
)

// fuzzSeeds returns valid files of every kind plus a few damaged ones.
func fuzzSeeds(f *testing.F, valid []byte) {
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add(bytes.Replace(valid, []byte(`"format": 1`), []byte(`"format": 2`), 1))
	f.Add(bytes.Replace(valid, []byte(`{`), []byte(`{"extra":[1,{"a":null}],`), 1))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"format":1,"epoch":18446744073709551615,"created_at":"2026-01-01T00:00:00+23:59"}`))
}

func fuzzFamily(f *testing.F) (*Authority, *Info) {
	dir := f.TempDir()
	auth, info, err := CreateFamily(dir, "Fuzz Family", t0)
	if err != nil {
		f.Fatal(err)
	}
	if err := info.AddBootstrap("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"); err != nil {
		f.Fatal(err)
	}
	return auth, info
}

func FuzzParseCertificate(f *testing.F) {
	auth, info := fuzzFamily(f)
	fuzzSeeds(f, mustMarshal(f, testCert(f, auth, info, "clinic-a", 3)))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCertificate(data)
		if err != nil {
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("parsed certificate does not marshal: %v", err)
		}
		c2, err := ParseCertificate(out)
		if err != nil || !c2.Equal(c) {
			t.Fatalf("round trip: %v", err)
		}
		// Verification never panics, and a roster agrees with Verify.
		r, _ := NewRoster(info)
		_, addErr := r.Add(c)
		if (c.Verify(info) == nil) != (addErr == nil) {
			t.Fatalf("Verify and Add disagree: %v", addErr)
		}
	})
}

func FuzzParseRevocation(f *testing.F) {
	auth, info := fuzzFamily(f)
	fuzzSeeds(f, mustMarshal(f, testRevocation(f, auth, "clinic-a", 2, "stolen laptop")))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRevocation(data)
		if err != nil {
			return
		}
		out, err := r.Marshal()
		if err != nil {
			t.Fatalf("parsed revocation does not marshal: %v", err)
		}
		r2, err := ParseRevocation(out)
		if err != nil || !r2.Equal(r) {
			t.Fatalf("round trip: %v", err)
		}
		_ = r.Verify(info)
	})
}

func FuzzParseJoinRequest(f *testing.F) {
	_, info := fuzzFamily(f)
	fuzzSeeds(f, mustMarshal(f, testRequest(f, info, "clinic-a", RoleRelay)))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseJoinRequest(data)
		if err != nil {
			return
		}
		out, err := r.Marshal()
		if err != nil {
			t.Fatalf("parsed request does not marshal: %v", err)
		}
		r2, err := ParseJoinRequest(out)
		if err != nil {
			t.Fatalf("round trip: %v", err)
		}
		if out2, _ := r2.Marshal(); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the request:\n%s\n%s", out, out2)
		}
	})
}

func FuzzParseInfo(f *testing.F) {
	_, info := fuzzFamily(f)
	fuzzSeeds(f, mustMarshal(f, info))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := ParseInfo(data)
		if err != nil {
			return
		}
		out, err := in.Marshal()
		if err != nil {
			t.Fatalf("parsed info does not marshal: %v", err)
		}
		in2, err := ParseInfo(out)
		if err != nil {
			t.Fatalf("round trip: %v", err)
		}
		if out2, _ := in2.Marshal(); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the info:\n%s\n%s", out, out2)
		}
		if _, err := NewRoster(in); err != nil {
			t.Fatalf("valid info makes no roster: %v", err)
		}
	})
}

func FuzzParseInstallable(f *testing.F) {
	auth, info := fuzzFamily(f)
	fuzzSeeds(f, mustMarshal(f, testCert(f, auth, info, "clinic-a", 1)))
	fuzzSeeds(f, mustMarshal(f, testRevocation(f, auth, "clinic-a", 1, "")))
	f.Add(mustMarshal(f, testRequest(f, info, "clinic-a", RoleSite)))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, r, err := ParseInstallable(data)
		if err == nil && (c == nil) == (r == nil) {
			t.Fatalf("want exactly one result: %v %v", c, r)
		}
	})
}
