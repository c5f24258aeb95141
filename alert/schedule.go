// Package alert decides when a practice is told that a site stopped syncing:
// opening hours and the time that counts inside them (schedule.go), the
// rules people set (rule.go), and the monitor that turns what it sees of each
// site into alerts, reminders and recovery notices (monitor.go). It is pure:
// no clock of its own, no goroutines, no I/O; callers pass the time.
package alert

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	_ "time/tzdata" // the IANA database in the binary: Windows machines have none
)

// Span is one range of opening hours on a day, in minutes from local
// midnight: Start inclusive, End exclusive, 0 <= Start < End <= 1440.
type Span struct {
	Start int `json:"start"`
	End   int `json:"end"`
}

func (s Span) String() string { return clock(s.Start) + "-" + clock(s.End) }

func clock(m int) string { return fmt.Sprintf("%02d:%02d", m/60, m%60) }

// Schedule is a rule's opening hours: per weekday (time.Sunday = 0) the range
// of hours, or none when closed, in one time zone, and the holidays (local
// dates, closed all day).
type Schedule struct {
	Zone     string   `json:"tz"`
	Days     [7]*Span `json:"days"`
	Holidays []string `json:"holidays,omitempty"` // YYYY-MM-DD, sorted
	loc      *time.Location
}

var dayNames = [7]string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// ErrSchedule is matched by every error about opening hours people typed.
var ErrSchedule = errors.New("opening hours")

func scheduleErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrSchedule, fmt.Sprintf(format, args...))
}

// NewSchedule builds a schedule from what `ppsync alerts add` takes: days
// ("mon-fri", "mon,wed,fri", "daily", "sat-sun"), hours (one "08:00-18:00"
// for every listed day, and any number of "sat=09:00-13:00" for one day, which
// also opens that day), a time zone name ("Europe/London", "UTC", "Local" is
// refused: a monitor on another machine would read it differently), and
// holidays ("2026-12-25").
func NewSchedule(days string, hours []string, zone string, holidays []string) (Schedule, error) {
	var s Schedule
	if zone == "" {
		return s, scheduleErr("--tz is missing: give the clinic's time zone, like Europe/London")
	}
	if strings.EqualFold(zone, "local") {
		return s, scheduleErr("--tz Local means different things on different machines: give the clinic's time zone, like Europe/London")
	}
	loc, err := time.LoadLocation(zone)
	if err != nil {
		return s, scheduleErr("%q is not a time zone this program knows (use a name like Europe/London or America/New_York)", zone)
	}
	s.Zone, s.loc = loc.String(), loc
	open, err := parseDays(days)
	if err != nil {
		return s, err
	}
	var all *Span
	for _, h := range hours {
		day, rng, perDay := strings.Cut(h, "=")
		if !perDay {
			rng = h
		}
		sp, err := parseSpan(rng)
		if err != nil {
			return s, err
		}
		if !perDay {
			if all != nil {
				return s, scheduleErr("--hours %q: the hours of every day are already %s (give one day's own hours as sat=09:00-13:00)", h, all)
			}
			all = &sp
			continue
		}
		d, ok := dayIndex(strings.ToLower(strings.TrimSpace(day)))
		if !ok {
			return s, scheduleErr("--hours %q: %q is not a day (use mon, tue, wed, thu, fri, sat or sun)", h, day)
		}
		if s.Days[d] != nil {
			return s, scheduleErr("--hours %q: %s already has hours %s", h, dayNames[d], s.Days[d])
		}
		s.Days[d] = &sp
	}
	if len(open) > 0 && all == nil {
		return s, scheduleErr("--days %s needs --hours, like --hours 08:00-18:00", days)
	}
	for _, d := range open {
		if s.Days[d] == nil {
			sp := *all
			s.Days[d] = &sp
		}
	}
	if all != nil && len(open) == 0 {
		return s, scheduleErr("--hours %s needs --days, like --days mon-fri", all)
	}
	if slices.IndexFunc(s.Days[:], func(p *Span) bool { return p != nil }) < 0 {
		return s, scheduleErr("no opening hours: give --days and --hours, like --days mon-fri --hours 08:00-18:00")
	}
	for _, h := range holidays {
		if _, err := time.Parse(time.DateOnly, h); err != nil {
			return s, scheduleErr("--holiday %q is not a date like 2026-12-25", h)
		}
		if !slices.Contains(s.Holidays, h) {
			s.Holidays = append(s.Holidays, h)
		}
	}
	slices.Sort(s.Holidays)
	return s, nil
}

func dayIndex(name string) (int, bool) {
	for i, n := range dayNames {
		if name == n || (len(name) > 3 && strings.HasPrefix(name, n) && isDayName(name)) {
			return i, true
		}
	}
	return 0, false
}

func isDayName(name string) bool {
	for _, full := range []string{"sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"} {
		if name == full {
			return true
		}
	}
	return false
}

// parseDays reads "mon-fri", "mon,wed,fri", "sat-sun", "fri-mon", "daily".
func parseDays(days string) ([]int, error) {
	days = strings.ToLower(strings.TrimSpace(days))
	if days == "" {
		return nil, nil
	}
	if days == "daily" || days == "all" || days == "mon-sun" {
		return []int{0, 1, 2, 3, 4, 5, 6}, nil
	}
	var out []int
	for _, part := range strings.Split(days, ",") {
		part = strings.TrimSpace(part)
		a, b, isRange := strings.Cut(part, "-")
		first, ok := dayIndex(a)
		if !ok {
			return nil, scheduleErr("--days %q: %q is not a day (use mon, tue, wed, thu, fri, sat, sun, ranges like mon-fri, or daily)", days, a)
		}
		last := first
		if isRange {
			if last, ok = dayIndex(b); !ok {
				return nil, scheduleErr("--days %q: %q is not a day (use mon, tue, wed, thu, fri, sat, sun, ranges like mon-fri, or daily)", days, b)
			}
		}
		for d := first; ; d = (d + 1) % 7 {
			if !slices.Contains(out, d) {
				out = append(out, d)
			}
			if d == last {
				break
			}
		}
	}
	return out, nil
}

// parseSpan reads "08:00-18:00" (24:00 ends at midnight).
func parseSpan(s string) (Span, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return Span{}, scheduleErr("--hours %q is not a range like 08:00-18:00", s)
	}
	start, err := parseClock(a)
	if err != nil {
		return Span{}, scheduleErr("--hours %q: %v", s, err)
	}
	end, err := parseClock(b)
	if err != nil {
		return Span{}, scheduleErr("--hours %q: %v", s, err)
	}
	if end <= start {
		return Span{}, scheduleErr("--hours %q ends before it starts (hours that run past midnight are two days' ranges, like mon=20:00-24:00 and tue=00:00-06:00)", s)
	}
	return Span{Start: start, End: end}, nil
}

func parseClock(s string) (int, error) {
	s = strings.TrimSpace(s)
	h, m, ok := strings.Cut(s, ":")
	if !ok {
		h, m = s, "00"
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59 || hh > 24 || (hh == 24 && mm != 0) || len(m) != 2 {
		return 0, fmt.Errorf("%q is not a time of day like 08:00", s)
	}
	return hh*60 + mm, nil
}

// Location returns the schedule's time zone.
func (s *Schedule) Location() *time.Location {
	if s.loc == nil {
		loc, err := time.LoadLocation(s.Zone)
		if err != nil {
			loc = time.UTC // a stored zone that no longer loads: a zone this binary once knew
		}
		s.loc = loc
	}
	return s.loc
}

// String describes the hours the way people write them: "mon-fri 08:00-18:00,
// sat 09:00-13:00 (Europe/London), closed 2026-12-25".
func (s *Schedule) String() string {
	var parts []string
	for i := 0; i < 7; {
		d := (i + 1) % 7 // from Monday
		sp := s.Days[d]
		if sp == nil {
			i++
			continue
		}
		j := i
		for j+1 < 7 && s.Days[(j+2)%7] != nil && *s.Days[(j+2)%7] == *sp {
			j++
		}
		name := dayNames[d]
		if j > i {
			name += "-" + dayNames[(j+1)%7]
		}
		parts = append(parts, name+" "+sp.String())
		i = j + 1
	}
	out := strings.Join(parts, ", ") + " (" + s.Zone + ")"
	if len(s.Holidays) > 0 {
		out += ", closed " + strings.Join(s.Holidays, " ")
	}
	return out
}

// openOn returns the opening hours of the local date y-m-d as instants, or
// false when closed. A range that starts or ends in a daylight-saving gap
// moves as time.Date moves it; on the day the clocks change the range is
// an hour shorter or longer in real time, as it is on the clinic's wall.
func (s *Schedule) openOn(y int, m time.Month, d int) (time.Time, time.Time, bool) {
	loc := s.Location()
	date := time.Date(y, m, d, 12, 0, 0, 0, loc)
	sp := s.Days[date.Weekday()]
	if sp == nil || slices.Contains(s.Holidays, date.Format(time.DateOnly)) {
		return time.Time{}, time.Time{}, false
	}
	start := time.Date(y, m, d, sp.Start/60, sp.Start%60, 0, 0, loc)
	end := time.Date(y, m, d, sp.End/60, sp.End%60, 0, 0, loc)
	return start, end, end.After(start)
}

// IsOpen reports whether t falls inside opening hours.
func (s *Schedule) IsOpen(t time.Time) bool {
	lt := t.In(s.Location())
	start, end, ok := s.openOn(lt.Date())
	return ok && !t.Before(start) && t.Before(end)
}

// OpenBetween returns how much of [from, to) falls inside opening hours.
func (s *Schedule) OpenBetween(from, to time.Time) time.Duration {
	var total time.Duration
	s.walk(from, to, func(a, b time.Time) bool {
		total += b.Sub(a)
		return true
	})
	return total
}

// horizon bounds every walk: a schedule open one day a year still answers.
const horizon = 400 * 24 * time.Hour

// Due returns when the time inside opening hours since `since` reaches
// `after`: an outage that began at 17:30 on a Friday, with hours 08:00-18:00
// Monday to Friday and after = 1h, is due at 08:30 on Monday. It returns the
// zero time when that does not happen within 400 days (a schedule of
// holidays only).
func (s *Schedule) Due(since time.Time, after time.Duration) time.Time {
	var due time.Time
	left := after
	if left <= 0 {
		return since
	}
	s.walk(since, since.Add(horizon), func(a, b time.Time) bool {
		if d := b.Sub(a); d < left {
			left -= d
			return true
		}
		due = a.Add(left)
		return false
	})
	return due
}

// NextOpen returns the first instant at or after t inside opening hours, or
// the zero time when there is none within 400 days.
func (s *Schedule) NextOpen(t time.Time) time.Time {
	var next time.Time
	s.walk(t, t.Add(horizon), func(a, _ time.Time) bool {
		next = a
		return false
	})
	return next
}

// walk calls f with each piece of [from, to) inside opening hours, in order,
// until f returns false.
func (s *Schedule) walk(from, to time.Time, f func(a, b time.Time) bool) {
	if !to.After(from) {
		return
	}
	loc := s.Location()
	lf := from.In(loc)
	y, m, d := lf.Date()
	// The day before too: nothing spans midnight today, but keep the walk
	// honest should a zone's midnight fall in a gap.
	day := time.Date(y, m, d-1, 12, 0, 0, 0, loc)
	for {
		dy, dm, dd := day.Date()
		start, end, ok := s.openOn(dy, dm, dd)
		if ok {
			if !start.Before(to) {
				return
			}
			a, b := maxTime(start, from), minTime(end, to)
			if b.After(a) && !f(a, b) {
				return
			}
		} else if time.Date(dy, dm, dd, 0, 0, 0, 0, loc).After(to) {
			return
		}
		day = time.Date(dy, dm, dd+1, 12, 0, 0, 0, loc)
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
