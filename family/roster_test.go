package family

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestRosterAddAndQuery(t *testing.T) {
	auth, info, _ := testFamily(t)
	r := testRoster(t, info)
	b := testCert(t, auth, info, "clinic-b", 1)
	a := testCert(t, auth, info, "clinic-a", 1)
	for _, c := range []*Certificate{b, a} {
		changed, err := r.Add(c)
		if err != nil || !changed {
			t.Fatalf("Add %s: %v, %v", c.Site, changed, err)
		}
	}
	// Adding the same certificate again (even a parsed copy) changes nothing.
	again, _ := ParseCertificate(mustMarshal(t, a))
	if changed, err := r.Add(again); err != nil || changed {
		t.Fatalf("re-Add: %v, %v", changed, err)
	}

	m, ok := r.Member(a.PeerID)
	if !ok || m.Site != "clinic-a" || m.Epoch != 1 || !bytes.Equal(m.PublicKey, a.PublicKey) || m.DatabaseID != a.DatabaseID || m.MachineFingerprint != a.MachineFingerprint || m.Role != RoleSite {
		t.Fatalf("Member = %+v, %v", m, ok)
	}
	if _, ok := r.Member(testPeerID(t)); ok {
		t.Fatal("stranger is a member")
	}
	if m, ok := r.Site("clinic-b"); !ok || m.PeerID != b.PeerID {
		t.Fatalf("Site = %+v, %v", m, ok)
	}
	if _, ok := r.Site("clinic-c"); ok {
		t.Fatal("unknown site found")
	}
	ms := r.Members()
	if len(ms) != 2 || ms[0].Site != "clinic-a" || ms[1].Site != "clinic-b" {
		t.Fatalf("Members = %+v", ms)
	}
	if st := r.Status("clinic-a"); st != (SiteStatus{Site: "clinic-a", State: StateCurrent, Epoch: 1}) {
		t.Fatalf("Status = %+v", st)
	}
	if st := r.Status("nope"); st.State != StateUnknown || st.State.String() != "unknown" {
		t.Fatalf("Status = %+v", st)
	}
	if r.FamilyID() != info.FamilyID || r.Info().Name != info.Name {
		t.Fatal("roster family")
	}

	// Returned values are copies.
	r.Certificates()[0].PublicKey[0] ^= 1
	m.PublicKey[0] ^= 1
	if k, err := r.KeyFor("clinic-a", 1); err != nil || !bytes.Equal(k, a.PublicKey) {
		t.Fatal("roster state changed through a returned value")
	}
}

func TestRosterRejects(t *testing.T) {
	auth, info, _ := testFamily(t)
	otherAuth, otherInfo, _ := testFamily(t)
	base := testCert(t, auth, info, "clinic-a", 2)
	other := testCert(t, auth, info, "clinic-b", 1)

	// Every signed field, altered, breaks the signature.
	tampers := map[string]func(c *Certificate){
		"format":              func(c *Certificate) { c.Format = 3 },
		"site":                func(c *Certificate) { c.Site = "clinic-b" },
		"role":                func(c *Certificate) { c.Role = RoleRelay },
		"peer_id+public_key":  func(c *Certificate) { c.PeerID, c.PublicKey = other.PeerID, other.Key() },
		"public_key":          func(c *Certificate) { c.PublicKey[5] ^= 1 },
		"machine_fingerprint": func(c *Certificate) { c.MachineFingerprint += "x" },
		"database_id":         func(c *Certificate) { c.DatabaseID = "db-x" },
		"requested_at":        func(c *Certificate) { c.RequestedAt = c.RequestedAt.Add(time.Second) },
		"epoch":               func(c *Certificate) { c.Epoch++ },
		"issued_at":           func(c *Certificate) { c.IssuedAt = c.IssuedAt.Add(-time.Nanosecond) },
		"signature":           func(c *Certificate) { c.Signature[0] ^= 0x80 },
		"signature truncated": func(c *Certificate) { c.Signature = c.Signature[:10] },
	}
	for name, tamper := range tampers {
		t.Run("tampered "+name, func(t *testing.T) {
			r := testRoster(t, info)
			c := base.Clone()
			tamper(c)
			_, err := r.Add(c)
			wantErr(t, err, ErrBadSignature, `"`+c.Site+`"`)
			wantErr(t, r.Check(c), ErrBadSignature)
			if len(r.Certificates()) != 0 {
				t.Fatal("tampered certificate kept")
			}
		})
	}

	t.Run("tampered file bytes", func(t *testing.T) {
		data := mustMarshal(t, base)
		i := bytes.Index(data, []byte(base.MachineFingerprint))
		data[i+len(base.MachineFingerprint)-1] ^= 1 // flip one byte inside the value
		c, err := ParseCertificate(data)
		if err != nil {
			t.Fatal(err)
		}
		_, err = testRoster(t, info).Add(c)
		wantErr(t, err, ErrBadSignature)
	})

	t.Run("family_id", func(t *testing.T) {
		c := base.Clone()
		c.FamilyID = otherInfo.FamilyID
		_, err := testRoster(t, info).Add(c)
		wantErr(t, err, ErrWrongFamily, "is for another family")
	})

	t.Run("other family's certificate", func(t *testing.T) {
		c := testCert(t, otherAuth, otherInfo, "clinic-a", 1)
		r := testRoster(t, info)
		_, err := r.Add(c)
		wantErr(t, err, ErrWrongFamily, otherInfo.FamilyID, info.FamilyID)
		wantErr(t, r.Check(c), ErrWrongFamily)
	})

	t.Run("signed by another authority", func(t *testing.T) {
		c := testCert(t, otherAuth, otherInfo, "clinic-a", 1)
		c.FamilyID = info.FamilyID
		c.Signature = otherAuth.sign(c.SignedBytes())
		_, err := testRoster(t, info).Add(c)
		wantErr(t, err, ErrBadSignature)
	})

	t.Run("revocation signed as certificate", func(t *testing.T) {
		// The domain prefixes keep one signed kind from passing for another.
		rev := testRevocation(t, auth, "clinic-a", 2, "")
		c := base.Clone()
		c.Signature = rev.Signature
		_, err := testRoster(t, info).Add(c)
		wantErr(t, err, ErrBadSignature)
	})

	t.Run("nil", func(t *testing.T) {
		_, err := testRoster(t, info).Add(nil)
		wantErr(t, err, ErrFormat)
		_, err = testRoster(t, info).AddRevocation(nil)
		wantErr(t, err, ErrFormat)
	})

	t.Run("conflict at the same epoch", func(t *testing.T) {
		r := testRoster(t, info)
		if _, err := r.Add(base); err != nil {
			t.Fatal(err)
		}
		twin := testCert(t, auth, info, "clinic-a", 2)
		_, err := r.Add(twin)
		wantErr(t, err, ErrConflict, "epoch 2")
		wantErr(t, r.Check(twin), ErrConflict)
		if m, _ := r.Site("clinic-a"); m.PeerID != base.PeerID {
			t.Fatal("conflicting certificate replaced the first")
		}
	})
}

func TestRosterSupersededAndRevoked(t *testing.T) {
	auth, info, _ := testFamily(t)
	c1 := testCert(t, auth, info, "clinic-a", 1)
	c2 := testCert(t, auth, info, "clinic-a", 2)
	c3 := testCert(t, auth, info, "clinic-a", 3)

	tests := []struct {
		name      string
		certs     []*Certificate
		revs      []*Revocation
		add       *Certificate
		target    error
		fragments []string
		changed   bool
	}{
		{"newer epoch", []*Certificate{c1}, nil, c2, nil, nil, true},
		{"older epoch", []*Certificate{c2}, nil, c1, ErrSuperseded, []string{"epoch 1 is superseded by epoch 2"}, true},
		{"revoked epoch", []*Certificate{c1}, []*Revocation{testRevocation(t, auth, "clinic-a", 1, "stolen")}, c1, ErrRevoked, []string{"stolen"}, false},
		{"revoked before known", nil, []*Revocation{testRevocation(t, auth, "clinic-a", 2, "")}, c1, ErrRevoked, []string{"epoch 1"}, false},
		{"after revocation", []*Certificate{c1}, []*Revocation{testRevocation(t, auth, "clinic-a", 2, "")}, c3, nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := testRoster(t, info)
			for _, c := range tt.certs {
				if _, err := r.Add(c); err != nil {
					t.Fatal(err)
				}
			}
			for _, v := range tt.revs {
				if _, err := r.AddRevocation(v); err != nil {
					t.Fatal(err)
				}
			}
			changed, err := r.Add(tt.add)
			wantErr(t, err, tt.target, tt.fragments...)
			if changed != tt.changed {
				t.Fatalf("changed = %v, want %v", changed, tt.changed)
			}
		})
	}
}

func TestRosterHistoryKeyFor(t *testing.T) {
	auth, info, _ := testFamily(t)
	c1 := testCert(t, auth, info, "clinic-a", 1)
	c2 := testCert(t, auth, info, "clinic-a", 2)

	for _, order := range [][]*Certificate{{c1, c2}, {c2, c1}} {
		r := testRoster(t, info)
		for _, c := range order {
			r.Add(c) // in reverse order the second Add reports ErrSuperseded and keeps c1
		}
		for _, c := range []*Certificate{c1, c2} {
			k, err := r.KeyFor("clinic-a", c.Epoch)
			if err != nil || !bytes.Equal(k, c.PublicKey) {
				t.Fatalf("KeyFor epoch %d: %v", c.Epoch, err)
			}
		}
		if r.StateOf("clinic-a", 1) != StateSuperseded || r.StateOf("clinic-a", 2) != StateCurrent || r.StateOf("clinic-a", 3) != StateUnknown {
			t.Fatalf("StateOf: %v %v %v", r.StateOf("clinic-a", 1), r.StateOf("clinic-a", 2), r.StateOf("clinic-a", 3))
		}
		// The old peer is no longer a member; the new one is.
		if _, ok := r.Member(c1.PeerID); ok {
			t.Fatal("superseded peer is a member")
		}
		if m, ok := r.Member(c2.PeerID); !ok || m.Epoch != 2 {
			t.Fatal("current peer is not a member")
		}
		wantErr(t, r.Check(c1), ErrSuperseded, "superseded by epoch 2")
		if got := r.Certificates(); len(got) != 2 || got[0].Epoch != 1 || got[1].Epoch != 2 {
			t.Fatalf("Certificates = %d", len(got))
		}
		_, err := r.KeyFor("clinic-a", 5)
		wantErr(t, err, ErrUnknownSite, "epoch 5", "newest known: 2")
		_, err = r.KeyFor("clinic-z", 1)
		wantErr(t, err, ErrUnknownSite, `"clinic-z"`)
	}

	// A revocation at epoch 1 revokes only epoch 1.
	r := testRoster(t, info)
	r.Add(c1)
	r.Add(c2)
	if changed, err := r.AddRevocation(testRevocation(t, auth, "clinic-a", 1, "old laptop")); err != nil || !changed {
		t.Fatal(changed, err)
	}
	_, err := r.KeyFor("clinic-a", 1)
	wantErr(t, err, ErrRevoked, "old laptop")
	if _, err := r.KeyFor("clinic-a", 2); err != nil {
		t.Fatal(err)
	}
	if st := r.Status("clinic-a"); st.State != StateCurrent || st.RevokedEpoch != 1 || st.Epoch != 2 {
		t.Fatalf("Status = %+v", st)
	}
	// At epoch 2, the whole site.
	r.AddRevocation(testRevocation(t, auth, "clinic-a", 2, ""))
	_, err = r.KeyFor("clinic-a", 2)
	wantErr(t, err, ErrRevoked)
	if st := r.Status("clinic-a"); st.State != StateRevoked || st.State.String() != "revoked" {
		t.Fatalf("Status = %+v", st)
	}
	if _, ok := r.Member(c2.PeerID); ok || len(r.Members()) != 0 || len(r.Certificates()) != 0 {
		t.Fatal("revoked site still a member")
	}
	if r.StateOf("clinic-a", 2) != StateRevoked {
		t.Fatal("StateOf revoked")
	}
	wantErr(t, r.Check(c2), ErrRevoked)
}

func TestRosterRevocations(t *testing.T) {
	auth, info, _ := testFamily(t)
	_, otherInfo, _ := testFamily(t)
	rev2 := testRevocation(t, auth, "clinic-a", 2, "a")
	rev2b, _ := auth.revoke("clinic-a", 2, "b", t0.Add(48*time.Hour))
	rev1 := testRevocation(t, auth, "clinic-a", 1, "")

	r := testRoster(t, info)
	steps := []struct {
		rev     *Revocation
		changed bool
		target  error
	}{
		{rev2, true, nil},
		{rev2, false, nil},  // same again
		{rev1, false, nil},  // implied by epoch 2
		{rev2b, false, nil}, // same epoch, issued later: the earlier one stays
	}
	for i, s := range steps {
		changed, err := r.AddRevocation(s.rev)
		wantErr(t, err, s.target)
		if changed != s.changed {
			t.Fatalf("step %d: changed = %v", i, changed)
		}
	}
	if got := r.Revocations(); len(got) != 1 || !got[0].Equal(rev2) {
		t.Fatalf("Revocations = %v", got)
	}
	// Another roster that saw them the other way round keeps the same one.
	r2 := testRoster(t, info)
	r2.AddRevocation(rev2b)
	if changed, _ := r2.AddRevocation(rev2); !changed || !r2.Revocations()[0].Equal(rev2) {
		t.Fatal("rosters disagree on the revocation kept")
	}

	tampered := rev2.Clone()
	tampered.Epoch = 9
	_, err := r.AddRevocation(tampered)
	wantErr(t, err, ErrBadSignature)
	tampered = rev2.Clone()
	tampered.Reason = "x"
	_, err = r.AddRevocation(tampered)
	wantErr(t, err, ErrBadSignature)
	foreign := rev2.Clone()
	foreign.FamilyID = otherInfo.FamilyID
	_, err = r.AddRevocation(foreign)
	wantErr(t, err, ErrWrongFamily)

	// Revocation files round-trip.
	parsed, err := ParseRevocation(mustMarshal(t, rev2))
	if err != nil || !parsed.Equal(rev2) {
		t.Fatalf("ParseRevocation: %v", err)
	}
}

func TestRosterSharedPeerIDIsNoMember(t *testing.T) {
	auth, info, _ := testFamily(t)
	req := testRequest(t, info, "clinic-a", RoleSite)
	a, _ := auth.issue(req, 1, 0, t0)
	req.Site = "clinic-b"
	b, _ := auth.issue(req, 1, 0, t0)
	r := testRoster(t, info)
	r.Add(a)
	r.Add(b)
	if _, ok := r.Member(a.PeerID); ok {
		t.Fatal("a peer ID claimed by two sites is trusted")
	}
}

func TestNewRosterRejectsBadInfo(t *testing.T) {
	_, info, _ := testFamily(t)
	info.AuthorityPublicKey = info.AuthorityPublicKey[:31]
	_, err := NewRoster(info)
	wantErr(t, err, ErrFormat, "authority public key")
	_, err = NewRoster(nil)
	wantErr(t, err, ErrFormat)
}

func TestRosterConcurrent(t *testing.T) {
	auth, info, _ := testFamily(t)
	r := testRoster(t, info)
	const sites, epochs = 8, 4
	certs := make([][]*Certificate, sites)
	for s := range certs {
		for e := 1; e <= epochs; e++ {
			certs[s] = append(certs[s], testCert(t, auth, info, fmt.Sprintf("site-%d", s), uint64(e)))
		}
	}
	revs := []*Revocation{testRevocation(t, auth, "site-0", epochs, ""), testRevocation(t, auth, "site-1", 2, "")}

	var wg sync.WaitGroup
	for s := range certs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, c := range certs[s] {
				r.Add(c)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, v := range revs {
			r.AddRevocation(v)
		}
	}()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				c := certs[i%sites][i%epochs]
				r.Member(c.PeerID)
				r.Site(c.Site)
				r.KeyFor(c.Site, c.Epoch)
				r.Status(c.Site)
				r.StateOf(c.Site, c.Epoch)
				r.Check(c)
				if i%20 == 0 {
					r.Members()
					r.Certificates()
					r.Revocations()
				}
			}
		}()
	}
	wg.Wait()

	// Whatever the interleaving, the end state is the same.
	ms := r.Members()
	if len(ms) != sites-1 {
		t.Fatalf("%d members, want %d", len(ms), sites-1)
	}
	for _, m := range ms {
		if m.Epoch != epochs {
			t.Fatalf("member %s at epoch %d", m.Site, m.Epoch)
		}
	}
	if _, err := r.KeyFor("site-1", 2); err == nil {
		t.Fatal("revoked epoch has a key")
	}
	if _, err := r.KeyFor("site-1", 3); err != nil {
		t.Fatal(err)
	}
}

func TestRosterBannedPeers(t *testing.T) {
	auth, info, _ := testFamily(t)
	r := testRoster(t, info)
	c1 := testCert(t, auth, info, "clinic-a", 1)
	if _, err := r.Add(c1); err != nil {
		t.Fatal(err)
	}
	if r.Banned(c1.PeerID) {
		t.Fatal("a current member is banned")
	}
	c2 := testCert(t, auth, info, "clinic-a", 2) // moved to a new machine
	if _, err := r.Add(c2); err != nil {
		t.Fatal(err)
	}
	if !r.Banned(c1.PeerID) || r.Banned(c2.PeerID) {
		t.Fatal("after a move the old peer must be banned and the new one not")
	}
	if _, err := r.AddRevocation(testRevocation(t, auth, "clinic-a", 2, "stolen")); err != nil {
		t.Fatal(err)
	}
	if !r.Banned(c2.PeerID) || !r.Banned(c1.PeerID) {
		t.Fatal("revoked peers are not banned")
	}
}

// A certificate older than one held (learned in the other order: the moved
// site's new certificate first) still bans its peer, and names its site.
func TestRosterBansASupersededCertificateLearnedLate(t *testing.T) {
	auth, info, _ := testFamily(t)
	r := testRoster(t, info)
	c1 := testCert(t, auth, info, "clinic-a", 1)
	c2 := testCert(t, auth, info, "clinic-a", 2)
	if _, err := r.Add(c2); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Add(c1); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("adding the older certificate: %v, want ErrSuperseded", err)
	}
	if !r.Banned(c1.PeerID) || r.Banned(c2.PeerID) {
		t.Fatal("the superseded peer is not banned, or the current one is")
	}
	if site, ok := r.SiteOf(c1.PeerID); !ok || site != "clinic-a" {
		t.Fatalf("SiteOf the superseded peer: %q %v", site, ok)
	}
	if _, ok := r.Member(c1.PeerID); ok {
		t.Fatal("the superseded peer is a member")
	}
}
