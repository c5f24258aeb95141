package lock

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckBinding(t *testing.T) {
	reg := Binding{Fingerprint: "aaaaaaaaaaaaaaaaaaaaaaaa", DatabaseID: "1111111111111111"}
	if err := CheckBinding(reg, reg); err != nil {
		t.Fatalf("same binding: %v", err)
	}

	otherMachine := Binding{Fingerprint: "bbbbbbbbbbbbbbbbbbbbbbbb", DatabaseID: reg.DatabaseID}
	otherDB := Binding{Fingerprint: reg.Fingerprint, DatabaseID: "2222222222222222"}
	both := Binding{Fingerprint: otherMachine.Fingerprint, DatabaseID: otherDB.DatabaseID}
	for name, tc := range map[string]struct {
		have      Binding
		want, not error
		words     []string
	}{
		"machine":  {otherMachine, ErrWrongMachine, ErrWrongDatabase, []string{"another machine", "split the practice's data", "ppsync family move", "aaaaaaaaaaaa", "bbbbbbbbbbbb"}},
		"database": {otherDB, ErrWrongDatabase, ErrWrongMachine, []string{"another database (data directory)", "split the practice's data", "ppsync family move", "111111111111", "222222222222"}},
		"both":     {both, ErrWrongMachine, ErrWrongDatabase, []string{"another machine"}},
	} {
		err := CheckBinding(reg, tc.have)
		if !errors.Is(err, tc.want) || !errors.Is(err, ErrRefused) || errors.Is(err, tc.not) {
			t.Errorf("%s: err = %v, want %v and ErrRefused only", name, err, tc.want)
			continue
		}
		var be *BindingError
		if !errors.As(err, &be) || be.Want != reg || be.Have != tc.have {
			t.Errorf("%s: err = %#v, want a *BindingError with both bindings", name, err)
		}
		msg := err.Error()
		for _, w := range tc.words {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: message %q lacks %q", name, msg, w)
			}
		}
		if strings.Contains(msg, "\n") {
			t.Errorf("%s: message is not one line: %q", name, msg)
		}
	}

	for _, empty := range []Binding{{}, {Fingerprint: "a"}, {DatabaseID: "1"}} {
		err := CheckBinding(empty, empty)
		if err == nil || errors.Is(err, ErrRefused) {
			t.Errorf("CheckBinding(%+v, same): %v, want a plain error", empty, err)
		}
		if err := CheckBinding(reg, empty); err == nil {
			t.Errorf("CheckBinding(reg, %+v) accepted", empty)
		}
	}
}

func TestCheckBindingAccount(t *testing.T) {
	alice, bob := Account{ID: "1000", Name: "alice"}, Account{ID: "1001", Name: "bob"}
	reg := Binding{Fingerprint: "aaaaaaaaaaaaaaaaaaaaaaaa", DatabaseID: "1111111111111111", Account: alice}
	if err := CheckBinding(reg, reg); err != nil {
		t.Fatalf("same account: %v", err)
	}
	// Another account: refused as such, even though its fingerprint (which
	// hashes the account's name) differs too.
	for _, have := range []Binding{
		{Fingerprint: reg.Fingerprint, DatabaseID: reg.DatabaseID, Account: bob},
		{Fingerprint: "bbbbbbbbbbbbbbbbbbbbbbbb", DatabaseID: reg.DatabaseID, Account: bob},
	} {
		err := CheckBinding(reg, have)
		if !errors.Is(err, ErrWrongAccount) || !errors.Is(err, ErrRefused) || errors.Is(err, ErrWrongMachine) {
			t.Fatalf("another account: %v", err)
		}
		for _, w := range []string{"set up by the account alice (1000)", "this is the account bob (1001)", "Run ppsync as alice", "ppsync service install"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("message %q lacks %q", err, w)
			}
		}
	}
	// A binding that records no account checks none.
	old := Binding{Fingerprint: reg.Fingerprint, DatabaseID: reg.DatabaseID}
	if err := CheckBinding(old, Binding{Fingerprint: reg.Fingerprint, DatabaseID: reg.DatabaseID, Account: bob}); err != nil {
		t.Fatalf("a binding without an account: %v", err)
	}
}

func TestCurrentAccount(t *testing.T) {
	a, err := CurrentAccount()
	if err != nil || a.ID == "" {
		t.Fatalf("CurrentAccount = %+v, %v", a, err)
	}
}
