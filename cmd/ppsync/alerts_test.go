package main

import (
	"testing"
	"time"
)

func TestAlertsUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		has  []string
	}{
		{[]string{"alerts"}, []string{"needs a subcommand", "ppsync help alerts"}},
		{[]string{"alerts", "add", "--site", "s"}, []string{"needs --data DATA"}},
		{[]string{"alerts", "remove", "--data", "d"}, []string{"needs ID"}},
		{[]string{"alerts", "test", "--data", "d", "a1", "a2"}, []string{`"a2" is one argument too many`}},
		{[]string{"alerts", "pause", "--data", "d", "a1"}, []string{"--until is missing"}},
		{[]string{"alerts", "pause", "--data", "d", "a1", "--until", "someday"}, []string{`--until "someday" is not a date`}},
	} {
		ppsync(t, "", nil, tc.args...).want(t, exitUsage, tc.has...)
	}
	// Against a data directory where nothing runs: exit 3, as every command
	// that needs the running node.
	dir := t.TempDir()
	ppsync(t, "", nil, "alerts", "list", "--data", dir).want(t, exitNotRunning, "ppsync is not running on "+dir)
}

func TestParseUntil(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.Local)
	for in, want := range map[string]time.Time{
		"now":                  now,
		"4h":                   now.Add(4 * time.Hour),
		"2026-12-28":           time.Date(2026, 12, 28, 0, 0, 0, 0, time.Local),
		"2026-12-28T08:30":     time.Date(2026, 12, 28, 8, 30, 0, 0, time.Local),
		"2026-12-28T08:30:00Z": time.Date(2026, 12, 28, 8, 30, 0, 0, time.UTC),
	} {
		got, err := parseUntil(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseUntil(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}
