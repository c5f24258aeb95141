package node

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/ppsync/ppsync/lock"
	"github.com/ppsync/ppsync/node/datadir"
)

// TestAccountBinding: init records the account that set the node up; run
// as another account is refused (ErrRefused: exit 4) in plain words; a
// directory set up before accounts were recorded takes the first account
// that runs it, and says so in the log.
func TestAccountBinding(t *testing.T) {
	f := newFixture(t, "clinic-a", "site")
	me, err := lock.CurrentAccount()
	if err != nil {
		t.Fatal(err)
	}
	id, err := datadir.ReadIdentity(f.data)
	if err != nil || id.Account != me {
		t.Fatalf("init recorded the account %+v (%v), want %+v", id.Account, err, me)
	}

	cfg := f.config()
	cfg.Account = func() (lock.Account, error) { return lock.Account{ID: "4242", Name: "mallory"}, nil }
	_, err = Open(context.Background(), cfg)
	if !errors.Is(err, ErrRefused) || !errors.Is(err, lock.ErrWrongAccount) {
		t.Fatalf("another account: %v", err)
	}
	for _, w := range []string{"set up by the account " + me.String(), "this is the account mallory (4242)", "Run ppsync as"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("message %q lacks %q", err, w)
		}
	}

	// An older directory without the account: the first start records it.
	id.Account = lock.Account{}
	if err := datadir.WriteIdentity(f.data, id); err != nil {
		t.Fatal(err)
	}
	cfg = f.config()
	var out syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&out, nil))
	f.startConfig(cfg).stop()
	if got, _ := datadir.ReadIdentity(f.data); got.Account != me {
		t.Fatalf("the first start recorded %+v, want %+v", got.Account, me)
	}
	if !strings.Contains(out.String(), "now bound to the account running it") {
		t.Errorf("the log does not say the account was recorded:\n%s", out.String())
	}
	cfg = f.config()
	cfg.Account = func() (lock.Account, error) { return lock.Account{ID: "4242", Name: "mallory"}, nil }
	if _, err := Open(context.Background(), cfg); !errors.Is(err, lock.ErrWrongAccount) {
		t.Fatalf("another account after the account was recorded: %v", err)
	}
}
