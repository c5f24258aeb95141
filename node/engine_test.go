package node

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestEngineTraces drives the engine with event traces and checks the
// sessions it starts. Each line: "event args -> expected actions".
func TestEngineTraces(t *testing.T) {
	traces := []struct {
		name  string
		steps []string
	}{
		{"connect fetches at once", []string{
			"up a -> a:connect",
			"up b -> b:connect",
			"up c -> ", // two sessions at most
			"done a ok -> c:connect",
		}},
		{"gap while a session runs runs again after", []string{
			"up a -> a:connect",
			"gap a -> ",
			"done a ok -> a:gap",
			"done a ok -> ",
		}},
		{"heartbeat ahead fetches, equal does not", []string{
			"up a -> a:connect",
			"done a ok -> ",
			"hb a x=5 local x=5 -> ",
			"hb a x=6 local x=5 -> a:peer-ahead",
		}},
		{"interval rounds", []string{
			"up a -> a:connect",
			"done a ok -> ",
			"tick 10s -> ",
			"tick 30s -> a:interval",
			"done a ok -> ",
			"tick 45s -> ",
			"tick 60s -> a:interval",
		}},
		{"failures back off, sync now overrides", []string{
			"up a -> a:connect",
			"done a fail -> ",
			"gap a -> ",
			"tick 1s -> a:gap",
			"done a fail -> ",
			"tick 2s -> ",
			"sync -> a:sync-now",
		}},
		{"down peers are forgotten", []string{
			"up a -> a:connect",
			"up b -> b:connect",
			"up c -> ",
			"down c -> ",
			"done a ok -> ",
			"gap c -> ",
		}},
	}
	for _, tr := range traces {
		t.Run(tr.name, func(t *testing.T) {
			e := newEngine(engineConfig{Interval: 30 * time.Second})
			base := time.Unix(1_000_000, 0)
			now := base
			for i, step := range tr.steps {
				ev, want, _ := strings.Cut(step, " -> ")
				f := strings.Fields(ev)
				var got []fetchAction
				switch f[0] {
				case "up":
					got = e.peerUp(f[1], now)
				case "down":
					e.peerDown(f[1])
				case "gap":
					got = e.gap(f[1], now)
				case "done":
					got = e.done(f[1], f[2] == "ok", now)
				case "sync":
					got = e.syncNow(now)
				case "tick":
					d, _ := time.ParseDuration(f[1])
					now = base.Add(d)
					got = e.tick(now)
				case "hb":
					got = e.heartbeat(f[1], parseFrontier(f[2]), parseFrontier(f[4]), now)
				default:
					t.Fatalf("step %d: unknown event %q", i, f[0])
				}
				var parts []string
				for _, a := range got {
					parts = append(parts, a.Peer+":"+a.Reason)
				}
				if g := strings.Join(parts, " "); g != strings.TrimSpace(want) {
					t.Fatalf("step %d %q: got %q, want %q", i, ev, g, want)
				}
			}
		})
	}
}

func parseFrontier(s string) map[string]uint64 {
	out := map[string]uint64{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		var n uint64
		fmt.Sscan(v, &n)
		out[k] = n
	}
	return out
}
