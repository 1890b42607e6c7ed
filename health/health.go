// Package health runs the active and passive health checks of the
// registry's containers. Caddy's own active health checks skip dynamic
// upstreams, so the checker here probes every registered container itself
// and moves it between healthy and unhealthy in the registry. It also
// probes extra targets (the platform's system services) and counts the
// passive failures the proxy reports. It imports registry and
// internal/recycle, never Caddy.
package health

import (
	"fmt"
	"time"
)

// Defaults of the health-check settings.
const (
	DefaultInterval           = 30 * time.Second
	DefaultTimeout            = 5 * time.Second
	DefaultPath               = "/health"
	DefaultHealthyThreshold   = 1
	DefaultUnhealthyThreshold = 1
	DefaultMaxConcurrent      = 64
	DefaultExpectStatus       = "2xx"
	DefaultMaxFails           = 3
	DefaultFailDuration       = 30 * time.Second
)

// Config is how containers are checked.
type Config struct {
	// Interval between two checks of a container.
	Interval time.Duration
	// Timeout of one check.
	Timeout time.Duration
	// Path requested by a check: GET http://{host}:{port}{Path}.
	Path string
	// ExpectLo and ExpectHi bound the status codes that pass (inclusive).
	ExpectLo, ExpectHi int
	// HealthyThreshold consecutive passes make a container healthy.
	HealthyThreshold int
	// UnhealthyThreshold consecutive failures make it unhealthy.
	UnhealthyThreshold int
	// MaxConcurrent bounds the checks in flight.
	MaxConcurrent int
	// MaxFails failed attempts while proxying within FailDuration make a
	// container unhealthy at once (passive check); 0 turns passive checks off.
	MaxFails int
	// FailDuration is the window of passive failures.
	FailDuration time.Duration
}

// WithDefaults returns c with zero fields set to their defaults. MaxFails
// is left as it is: 0 means off, so the caller sets its default.
func (c Config) WithDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Path == "" {
		c.Path = DefaultPath
	}
	if c.ExpectLo == 0 {
		c.ExpectLo, c.ExpectHi, _ = ParseStatusRange(DefaultExpectStatus)
	}
	if c.HealthyThreshold <= 0 {
		c.HealthyThreshold = DefaultHealthyThreshold
	}
	if c.UnhealthyThreshold <= 0 {
		c.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = DefaultMaxConcurrent
	}
	if c.FailDuration <= 0 {
		c.FailDuration = DefaultFailDuration
	}
	return c
}

// ParseStatusRange parses an expected status: a code ("200"), a class
// ("2xx") or a range ("200-399").
func ParseStatusRange(s string) (lo, hi int, err error) {
	bad := fmt.Errorf("expected status %q: want a code (200), a class (2xx) or a range (200-399)", s)
	if len(s) == 3 && s[1] == 'x' && s[2] == 'x' && s[0] >= '1' && s[0] <= '5' {
		lo = int(s[0]-'0') * 100
		return lo, lo + 99, nil
	}
	var a, b int
	if n, _ := fmt.Sscanf(s, "%d-%d", &a, &b); n == 2 && fmt.Sprintf("%d-%d", a, b) == s {
		lo, hi = a, b
	} else if n, _ := fmt.Sscanf(s, "%d", &a); n == 1 && fmt.Sprint(a) == s {
		lo, hi = a, a
	} else {
		return 0, 0, bad
	}
	if lo < 100 || hi > 599 || lo > hi {
		return 0, 0, bad
	}
	return lo, hi, nil
}
