// The argument parsers shared by imagelb's Caddyfile blocks: each reads one
// option's argument, checks it and errors with the line.

package imagelb

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/imagelb/caddy-imagelb/registry"
)

// fractionArg reads the single argument of the current option as a share
// from 0 to 1, or a percentage from 0% to 100%.
func fractionArg(d *caddyfile.Dispenser) (float64, error) {
	opt := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	num, percent := strings.CutSuffix(v, "%")
	f, err := strconv.ParseFloat(num, 64)
	if percent {
		f /= 100
	}
	if err != nil || math.IsNaN(f) || f < 0 || f > 1 {
		return 0, d.Errf("%s %q: want a share from 0 to 1 (e.g. 0.2) or a percentage (e.g. 20%%)", opt, v)
	}
	return f, nil
}

// durationArg reads the single argument of the current option as a
// duration of at most registry.MaxOptionDuration, which must be positive if positive
// is set and may otherwise be 0.
func durationArg(d *caddyfile.Dispenser, positive bool) (time.Duration, error) {
	opt := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := registry.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s %q: want a duration such as 30s or a number of seconds", opt, v)
	}
	if dur < 0 || (positive && dur == 0) || dur > registry.MaxOptionDuration {
		if positive {
			return 0, d.Errf("%s %q: want a positive duration of at most %s", opt, v, registry.MaxOptionDuration)
		}
		return 0, d.Errf("%s %q: want a duration from 0 to %s", opt, v, registry.MaxOptionDuration)
	}
	return dur, nil
}

// checkZone checks a zone name as the registry does.
func checkZone(d *caddyfile.Dispenser, v string) error {
	if v == "" || !registry.ValidText(v, registry.MaxNameLength) {
		return d.Errf("zone %q must be 1-%d characters without control characters", v, registry.MaxNameLength)
	}
	return nil
}

// imageIDArg reads the image_id a split or mirror of service self names.
func imageIDArg(d *caddyfile.Dispenser, opt, v string, self int64) (int64, error) {
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, d.Errf("%s image_id %q must be a positive integer", opt, v)
	}
	if id == self {
		return 0, d.Errf("%s %d: that is this service itself; name another image", opt, id)
	}
	return id, nil
}

// percentArg reads a percent from 0 to 100, with or without the % sign.
func percentArg(d *caddyfile.Dispenser, opt, v string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > 100 {
		return 0, d.Errf("%s percent %q: want a share from 0%% to 100%%, such as 10%%", opt, v)
	}
	return f, nil
}

func singleArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return v, nil
}

func intArg(d *caddyfile.Dispenser, lo, hi int) (int, error) {
	opt := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, d.Errf("%s %q: want a whole number from %d to %d", opt, v, lo, hi)
	}
	return n, nil
}
