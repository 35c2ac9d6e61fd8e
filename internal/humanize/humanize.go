// Package humanize writes times and durations for people, in logs, status
// lines and the CLI.
package humanize

import (
	"fmt"
	"time"
)

// Relative says how far t is from now: "in 3d 4h", "5m ago".
func Relative(t, now time.Time) string {
	d := t.Sub(now)
	if d >= 0 {
		return "in " + Duration(d)
	}
	return Duration(-d) + " ago"
}

// Duration is a duration for people, to two units: 3d 4h, 5m 10s, 250ms.
func Duration(d time.Duration) string {
	neg := d < 0
	if neg {
		d = -d
	}
	var s string
	switch {
	case d < time.Second:
		s = d.Round(time.Millisecond).String()
	case d < time.Minute:
		s = d.Round(100 * time.Millisecond).String()
	default:
		units := []struct {
			d    time.Duration
			name string
		}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}}
		for i, u := range units {
			if d < u.d {
				continue
			}
			n := d / u.d
			s = fmt.Sprintf("%d%s", n, u.name)
			if i+1 < len(units) {
				if m := (d - n*u.d) / units[i+1].d; m > 0 {
					s += fmt.Sprintf(" %d%s", m, units[i+1].name)
				}
			}
			break
		}
	}
	if neg {
		return "-" + s
	}
	return s
}
