package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// ServiceOptions are a service's traffic-control options, set in the
// registration object or a static service block. The zero value turns
// everything off. Their JSON form is the API's ("Service options").
type ServiceOptions struct {
	// HashKey is what ip_hash and consistent_hash hash: "ip" (the
	// default), "header:NAME" or "cookie:NAME".
	HashKey string `json:"hash_key,omitempty"`
	// Sticky pins a client to a container with a signed cookie
	// imagelb_<image_id> while the container can take requests.
	Sticky bool `json:"sticky,omitempty"`
	// RateLimit caps the request rate of the service (or of each client IP).
	RateLimit *RateLimit `json:"rate_limit,omitempty"`
	// MaxInFlight caps the requests in flight for the service; 0: no cap.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// SlowStart is how long a newly healthy container takes to ramp up to
	// its full weight; 0: at once.
	SlowStart Duration `json:"slow_start,omitempty"`
	// Outlier ejects containers that fail, for a cooldown.
	Outlier *Outlier `json:"outlier,omitempty"`
	// RetryBudget is the share of requests that may be retried, from 0 to
	// 1; 0: no budget beyond max_retries.
	RetryBudget float64 `json:"retry_budget,omitempty"`
	// OnDemand marks an image that may scale to zero: a request that
	// finds no available container waits while the app's on_demand
	// start_url starts one, and the image is stopped through stop_url
	// after IdleTimeout without activity.
	OnDemand *OnDemand `json:"on_demand,omitempty"`
	// Split sends shares of the image's requests to other images, each
	// served with that image's algorithm, containers and options (split.go).
	// Default: none.
	Split []SplitTarget `json:"split,omitempty"`
	// Mirror copies a share of the image's requests to another image, fire
	// and forget (split.go). Default: none.
	Mirror *Mirror `json:"mirror,omitempty"`
}

// OnDemand is the service side of start on demand; the webhooks are the
// operator's (the app's on_demand block), never the registration's.
type OnDemand struct {
	// IdleTimeout is how long the image may go without a request or an
	// open stream before stop_url is called; default DefaultIdleTimeout.
	IdleTimeout Duration `json:"idle_timeout,omitempty"`
}

// DefaultIdleTimeout is the on_demand idle_timeout when none is given.
const DefaultIdleTimeout = 10 * time.Minute

// MinIdleTimeout is the shortest idle_timeout: idleness is judged about
// once a second.
const MinIdleTimeout = time.Second

// RateLimit is a token bucket: Requests per Interval, bursts of Burst.
type RateLimit struct {
	Requests int      `json:"requests"`
	Interval Duration `json:"interval,omitempty"`
	Burst    int      `json:"burst,omitempty"`
	// Per is "service" (one bucket for the image) or "client_ip" (one per
	// client address).
	Per string `json:"per,omitempty"`
}

// Rate limit scopes.
const (
	PerService  = "service"
	PerClientIP = "client_ip"
)

// Outlier configures outlier ejection (circuit breaking) per container.
type Outlier struct {
	// ConsecutiveFailures ejects a container after this many failed
	// attempts in a row; 0: not by count.
	ConsecutiveFailures int `json:"consecutive_failures,omitempty"`
	// ErrorRate ejects a container whose share of failed attempts over
	// Interval reaches it (with at least MinRequests attempts); 0: not by rate.
	ErrorRate   float64  `json:"error_rate,omitempty"`
	MinRequests int      `json:"min_requests,omitempty"`
	Interval    Duration `json:"interval,omitempty"`
	// Cooldown is how long an ejected container gets no traffic before one
	// probe request is let through (half-open).
	Cooldown Duration `json:"cooldown,omitempty"`
	// MaxEjectedPercent caps the share of a service's available containers
	// that may be ejected at once, so an image never goes to zero by
	// ejection (1-100; 0 means the default, 50).
	MaxEjectedPercent int `json:"max_ejected_percent,omitempty"`
}

// Defaults and limits of the options.
const (
	DefaultConsecutiveFailures = 5
	DefaultOutlierCooldown     = 30 * time.Second
	DefaultMaxEjectedPercent   = 50
	DefaultErrorRateInterval   = 10 * time.Second
	DefaultErrorRateMin        = 10
	// MaxOptionDuration and MaxOptionCount bound the durations and counts
	// of the options.
	MaxOptionDuration = 24 * time.Hour
	MaxOptionCount    = 1_000_000_000
)

// HashKeyKind is the part of a hash key before the colon.
func (o ServiceOptions) HashKeyKind() (kind, name string) {
	if o.HashKey == "" {
		return "ip", ""
	}
	kind, name, _ = strings.Cut(o.HashKey, ":")
	return kind, name
}

// Duration is a duration written as a Go duration string ("30s", "1m30s")
// or a number of seconds.
type Duration time.Duration

// MarshalJSON writes the duration as a string such as "30s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string or a number of seconds; null
// leaves the duration as it is.
func (d *Duration) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := ParseDuration(s)
		if err != nil {
			return durationError("string " + string(b))
		}
		*d = Duration(v)
		return nil
	}
	secs, err := strconv.ParseFloat(string(b), 64)
	if err != nil || math.IsNaN(secs) || math.IsInf(secs, 0) || math.Abs(secs) > MaxOptionDuration.Seconds()*1000 {
		return durationError(string(b))
	}
	*d = Duration(secs * float64(time.Second))
	return nil
}

// durationError is the error of a JSON value that is no duration. It is a
// type error, so that the decoder says in which field it is.
func durationError(value string) error {
	return &json.UnmarshalTypeError{Value: value, Type: reflect.TypeFor[Duration]()}
}

// ParseDuration parses a Go duration string, or a number of seconds.
func ParseDuration(s string) (time.Duration, error) {
	if secs, err := strconv.ParseFloat(s, 64); err == nil && !math.IsNaN(secs) && !math.IsInf(secs, 0) &&
		math.Abs(secs) <= MaxOptionDuration.Seconds()*1000 {
		return time.Duration(secs * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as \"30s\" or a number of seconds", s)
	}
	return d, nil
}

// Normalize fills the options' defaults and checks them; loc is where the
// options are in the input (for error locations).
func (o *ServiceOptions) Normalize(alg Algorithm, loc ...any) error {
	var fe fieldErrors
	o.check(&fe, alg, loc)
	return fe.err()
}

func (o *ServiceOptions) check(fe *fieldErrors, alg Algorithm, loc []any) {
	// defaults go into copies: the caller's nested values stay as they were
	if o.RateLimit != nil {
		rl := *o.RateLimit
		o.RateLimit = &rl
	}
	if o.Outlier != nil {
		od := *o.Outlier
		o.Outlier = &od
	}
	at := func(field ...any) []any { return append(append([]any{}, loc...), field...) }
	if o.HashKey != "" {
		if !ValidHashKey(o.HashKey) {
			fe.add("value_error", fmt.Sprintf("hash_key %q: use ip, header:NAME or cookie:NAME", o.HashKey), at("hash_key")...)
		}
		if alg == IPHash && o.HashKey != "ip" {
			fe.add("value_error", fmt.Sprintf("hash_key %q: ip_hash always hashes the client IP; use consistent_hash to hash a header or cookie", o.HashKey), at("hash_key")...)
		}
	}
	if rl := o.RateLimit; rl != nil {
		if rl.Requests < 1 || rl.Requests > MaxOptionCount {
			fe.add("value_error", fmt.Sprintf("rate_limit.requests must be from 1 to %d, got %d", MaxOptionCount, rl.Requests), at("rate_limit", "requests")...)
		}
		if rl.Interval == 0 {
			rl.Interval = Duration(time.Second)
		}
		checkDuration(fe, "rate_limit.interval", time.Duration(rl.Interval), true, at("rate_limit", "interval"))
		if rl.Burst < 0 || rl.Burst > MaxOptionCount {
			fe.add("value_error", fmt.Sprintf("rate_limit.burst must be from 0 to %d, got %d", MaxOptionCount, rl.Burst), at("rate_limit", "burst")...)
		}
		if rl.Burst == 0 {
			rl.Burst = max(rl.Requests, 1)
		}
		switch rl.Per {
		case "":
			rl.Per = PerService
		case PerService, PerClientIP:
		default:
			fe.add("enum", fmt.Sprintf("rate_limit.per %q: use service or client_ip", rl.Per), at("rate_limit", "per")...)
		}
	}
	if od := o.OnDemand; od != nil {
		cp := *od
		o.OnDemand = &cp
		if cp.IdleTimeout == 0 {
			o.OnDemand.IdleTimeout = Duration(DefaultIdleTimeout)
		}
		if d := time.Duration(o.OnDemand.IdleTimeout); d < MinIdleTimeout || d > MaxOptionDuration {
			fe.add("value_error", fmt.Sprintf("on_demand.idle_timeout must be from %s to %s, got %s", MinIdleTimeout, MaxOptionDuration, d), at("on_demand", "idle_timeout")...)
		}
	}
	if o.MaxInFlight < 0 || o.MaxInFlight > MaxOptionCount {
		fe.add("value_error", fmt.Sprintf("max_in_flight must be from 0 (no cap) to %d, got %d", MaxOptionCount, o.MaxInFlight), at("max_in_flight")...)
	}
	checkDuration(fe, "slow_start", time.Duration(o.SlowStart), false, at("slow_start"))
	if od := o.Outlier; od != nil {
		if od.ConsecutiveFailures < 0 || od.ConsecutiveFailures > 1_000_000 {
			fe.add("value_error", fmt.Sprintf("outlier.consecutive_failures must be from 0 to 1000000, got %d", od.ConsecutiveFailures), at("outlier", "consecutive_failures")...)
		}
		if math.IsNaN(od.ErrorRate) || od.ErrorRate < 0 || od.ErrorRate > 1 {
			fe.add("value_error", fmt.Sprintf("outlier.error_rate must be from 0 to 1, got %v", od.ErrorRate), at("outlier", "error_rate")...)
		}
		if od.ConsecutiveFailures == 0 && od.ErrorRate == 0 {
			od.ConsecutiveFailures = DefaultConsecutiveFailures
		}
		if od.MinRequests < 0 || od.MinRequests > MaxOptionCount {
			fe.add("value_error", fmt.Sprintf("outlier.min_requests must be from 0 to %d, got %d", MaxOptionCount, od.MinRequests), at("outlier", "min_requests")...)
		}
		if od.ErrorRate > 0 && od.MinRequests == 0 {
			od.MinRequests = DefaultErrorRateMin
		}
		if od.ErrorRate > 0 && od.Interval == 0 {
			od.Interval = Duration(DefaultErrorRateInterval)
		}
		checkDuration(fe, "outlier.interval", time.Duration(od.Interval), false, at("outlier", "interval"))
		if od.Cooldown == 0 {
			od.Cooldown = Duration(DefaultOutlierCooldown)
		}
		checkDuration(fe, "outlier.cooldown", time.Duration(od.Cooldown), true, at("outlier", "cooldown"))
		if od.MaxEjectedPercent == 0 {
			od.MaxEjectedPercent = DefaultMaxEjectedPercent
		}
		if od.MaxEjectedPercent < 0 || od.MaxEjectedPercent > 100 {
			fe.add("value_error", fmt.Sprintf("outlier.max_ejected_percent must be from 0 to 100, got %d", od.MaxEjectedPercent), at("outlier", "max_ejected_percent")...)
		}
	}
	if math.IsNaN(o.RetryBudget) || o.RetryBudget < 0 || o.RetryBudget > 1 {
		fe.add("value_error", fmt.Sprintf("retry_budget must be from 0 (no budget) to 1, got %v", o.RetryBudget), at("retry_budget")...)
	}
	o.checkSplit(fe, at)
}

func checkDuration(fe *fieldErrors, field string, d time.Duration, positive bool, loc []any) {
	switch {
	case d < 0 || (positive && d == 0):
		fe.add("value_error", fmt.Sprintf("%s must be a positive duration, got %s", field, d), loc...)
	case d > MaxOptionDuration:
		fe.add("value_error", fmt.Sprintf("%s must be at most %s, got %s", field, MaxOptionDuration, d), loc...)
	}
}

// ValidHashKey reports whether v is ip, header:NAME or cookie:NAME.
func ValidHashKey(v string) bool {
	kind, name, hasName := strings.Cut(v, ":")
	switch kind {
	case "ip":
		return !hasName
	case "header", "cookie":
		return hasName && ValidToken(name)
	}
	return false
}

// ValidToken reports whether s is a non-empty HTTP token (a header or
// cookie name), as hash_key and zone_header need.
func ValidToken(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for _, r := range s {
		if r > 126 || r <= ' ' || strings.ContainsRune("\"(),/:;<=>?@[\\]{}", r) {
			return false
		}
	}
	return true
}
