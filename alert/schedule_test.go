package alert

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func mustSchedule(t *testing.T, days string, hours []string, zone string, holidays ...string) Schedule {
	t.Helper()
	s, err := NewSchedule(days, hours, zone, holidays)
	if err != nil {
		t.Fatalf("NewSchedule(%q, %q, %q): %v", days, hours, zone, err)
	}
	return s
}

func at(t *testing.T, zone, local string) time.Time {
	t.Helper()
	loc, err := time.LoadLocation(zone)
	if err != nil {
		t.Fatal(err)
	}
	v, err := time.ParseInLocation("2006-01-02 15:04", local, loc)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestScheduleDue(t *testing.T) {
	const london = "Europe/London"
	weekdays := []string{"08:00-18:00"}
	cases := []struct {
		name     string
		days     string
		hours    []string
		zone     string
		holidays []string
		since    string // local time in zone
		after    time.Duration
		want     string // local time in zone
	}{
		{"the issue's example: Friday 17:30, alerts Monday 08:30", "mon-fri", weekdays, london, nil, "2026-12-04 17:30", time.Hour, "2026-12-07 08:30"},
		{"inside hours", "mon-fri", weekdays, london, nil, "2026-12-02 10:00", time.Hour, "2026-12-02 11:00"},
		{"before opening", "mon-fri", weekdays, london, nil, "2026-12-02 06:00", time.Hour, "2026-12-02 09:00"},
		{"across closing time", "mon-fri", weekdays, london, nil, "2026-12-01 17:00", 2 * time.Hour, "2026-12-02 09:00"},
		{"began on a closed weekend", "mon-fri", weekdays, london, nil, "2026-12-05 11:00", time.Hour, "2026-12-07 09:00"},
		{"Christmas and the weekend", "mon-fri", weekdays, london, []string{"2026-12-25"}, "2026-12-24 17:30", time.Hour, "2026-12-28 08:30"},
		{"two holidays", "mon-fri", weekdays, london, []string{"2026-12-25", "2026-12-28"}, "2026-12-24 17:30", time.Hour, "2026-12-29 08:30"},
		{"Saturday's own hours", "mon-fri", []string{"08:00-18:00", "sat=09:00-13:00"}, london, nil, "2026-12-04 17:30", time.Hour, "2026-12-05 09:30"},
		{"a short threshold", "daily", []string{"00:00-24:00"}, london, nil, "2026-12-04 17:30", time.Minute, "2026-12-04 17:31"},
		{"more than a day of hours", "mon-fri", weekdays, london, nil, "2026-12-07 08:00", 12 * time.Hour, "2026-12-08 10:00"},
		// Spring forward (London, 29 March 2026, 01:00 -> 02:00): a whole
		// day of hours is 23 real hours long.
		{"spring forward, open all day", "daily", []string{"00:00-24:00"}, london, nil, "2026-03-28 12:00", 24 * time.Hour, "2026-03-29 13:00"},
		{"spring forward, hours span the gap", "daily", []string{"00:00-03:00"}, london, nil, "2026-03-29 00:00", 150 * time.Minute, "2026-03-30 00:30"},
		// Fall back (25 October 2026, 02:00 -> 01:00): 00:00-03:00 is four
		// real hours.
		{"fall back, hours span the repeated hour", "daily", []string{"00:00-03:00"}, london, nil, "2026-10-25 00:00", 210 * time.Minute, "2026-10-25 02:30"},
		{"fall back weekend, Friday evening outage", "mon-fri", weekdays, london, nil, "2026-10-23 17:30", time.Hour, "2026-10-26 08:30"},
		{"New York spring forward", "mon-fri", []string{"01:00-18:00"}, "America/New_York", nil, "2026-03-06 17:30", 2 * time.Hour, "2026-03-09 02:30"},
		{"a zone far east", "mon-fri", weekdays, "Pacific/Auckland", nil, "2026-12-04 17:30", time.Hour, "2026-12-07 08:30"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := mustSchedule(t, c.days, c.hours, c.zone, c.holidays...)
			since, want := at(t, c.zone, c.since), at(t, c.zone, c.want)
			got := s.Due(since, c.after)
			if !got.Equal(want) {
				t.Fatalf("Due(%s, %v) = %s, want %s", c.since, c.after, got.In(s.Location()).Format("Mon 2006-01-02 15:04 MST"), want.Format("Mon 2006-01-02 15:04 MST"))
			}
			// Due and OpenBetween agree.
			if open := s.OpenBetween(since, got); open != c.after && c.after > 0 {
				t.Fatalf("OpenBetween(since, due) = %v, want %v", open, c.after)
			}
		})
	}
}

func TestScheduleOpenBetweenDST(t *testing.T) {
	const london = "Europe/London"
	s := mustSchedule(t, "daily", []string{"00:00-03:00"}, london)
	spring := s.OpenBetween(at(t, london, "2026-03-29 00:00"), at(t, london, "2026-03-30 00:00"))
	if spring != 2*time.Hour {
		t.Errorf("29 March 00:00-03:00 is %v of real time, want 2h (the clocks skip 01:00-02:00)", spring)
	}
	fall := s.OpenBetween(at(t, london, "2026-10-25 00:00"), at(t, london, "2026-10-26 00:00"))
	if fall != 4*time.Hour {
		t.Errorf("25 October 00:00-03:00 is %v of real time, want 4h (01:00-02:00 happens twice)", fall)
	}
	week := mustSchedule(t, "mon-fri", []string{"08:00-18:00"}, london)
	if got := week.OpenBetween(at(t, london, "2026-11-30 00:00"), at(t, london, "2026-12-07 00:00")); got != 50*time.Hour {
		t.Errorf("a week of mon-fri 08:00-18:00 is %v, want 50h", got)
	}
}

func TestScheduleIsOpen(t *testing.T) {
	const london = "Europe/London"
	s := mustSchedule(t, "mon-fri", []string{"08:00-18:00", "sat=09:00-13:00"}, london, "2026-12-25")
	for local, want := range map[string]bool{
		"2026-12-02 07:59": false, "2026-12-02 08:00": true, "2026-12-02 17:59": true, "2026-12-02 18:00": false,
		"2026-12-05 10:00": true, "2026-12-05 13:00": false, "2026-12-06 10:00": false, "2026-12-25 10:00": false,
	} {
		if got := s.IsOpen(at(t, london, local)); got != want {
			t.Errorf("IsOpen(%s) = %v, want %v", local, got, want)
		}
	}
	if next := s.NextOpen(at(t, london, "2026-12-24 18:30")); !next.Equal(at(t, london, "2026-12-26 09:00")) {
		t.Errorf("NextOpen after Christmas Eve = %s, want Saturday 26th 09:00", next)
	}
}

func TestScheduleString(t *testing.T) {
	s := mustSchedule(t, "mon-fri", []string{"08:00-18:00", "sat=09:00-13:00"}, "Europe/London", "2026-12-25", "2026-12-24")
	want := "mon-fri 08:00-18:00, sat 09:00-13:00 (Europe/London), closed 2026-12-24 2026-12-25"
	if got := s.String(); got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

func TestScheduleErrors(t *testing.T) {
	cases := []struct {
		days  string
		hours []string
		zone  string
		hol   []string
		want  string
	}{
		{"mon-fri", []string{"08:00-18:00"}, "", nil, "--tz is missing"},
		{"mon-fri", []string{"08:00-18:00"}, "Local", nil, "different machines"},
		{"mon-fri", []string{"08:00-18:00"}, "Mars/Olympus", nil, "not a time zone"},
		{"mon-frx", []string{"08:00-18:00"}, "UTC", nil, `"frx" is not a day`},
		{"mon-fri", nil, "UTC", nil, "needs --hours"},
		{"", []string{"08:00-18:00"}, "UTC", nil, "needs --days"},
		{"", nil, "UTC", nil, "no opening hours"},
		{"mon-fri", []string{"18:00-08:00"}, "UTC", nil, "ends before it starts"},
		{"mon-fri", []string{"8-18:30x"}, "UTC", nil, "not a time of day"},
		{"mon-fri", []string{"25:00-26:00"}, "UTC", nil, "not a time of day"},
		{"mon-fri", []string{"08:00"}, "UTC", nil, "not a range"},
		{"mon-fri", []string{"08:00-18:00", "09:00-17:00"}, "UTC", nil, "already"},
		{"mon-fri", []string{"08:00-18:00", "xyz=09:00-13:00"}, "UTC", nil, `"xyz" is not a day`},
		{"mon-fri", []string{"08:00-18:00"}, "UTC", []string{"25/12/2026"}, "not a date"},
	}
	for _, c := range cases {
		_, err := NewSchedule(c.days, c.hours, c.zone, c.hol)
		if err == nil || !errors.Is(err, ErrSchedule) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewSchedule(%q, %q, %q, %q) = %v, want an opening-hours error saying %q", c.days, c.hours, c.zone, c.hol, err, c.want)
		}
	}
	// Ranges wrap around the week, full day names work, 24:00 closes at midnight.
	s := mustSchedule(t, "fri-mon,Wednesday", []string{"00:00-24:00"}, "UTC")
	for d, open := range map[time.Weekday]bool{time.Friday: true, time.Saturday: true, time.Sunday: true, time.Monday: true, time.Tuesday: false, time.Wednesday: true, time.Thursday: false} {
		if (s.Days[d] != nil) != open {
			t.Errorf("fri-mon,Wednesday: %s open = %v, want %v", d, s.Days[d] != nil, open)
		}
	}
}
