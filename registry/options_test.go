package registry

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// optionsBody is an object registration of one container with the given
// algorithm and extra top-level fields (options).
func optionsBody(alg Algorithm, extra string) string {
	body := `{"image_name":"app","algorithm":"` + string(alg) + `","containers":[{"container_id":"c1","port":8080}]`
	if extra != "" {
		body += "," + extra
	}
	return body + "}"
}

func dur(d time.Duration) Duration { return Duration(d) }

func TestDecodeOptionsAccepts(t *testing.T) {
	rl := func(requests int, interval time.Duration, burst int, per string) *RateLimit {
		return &RateLimit{Requests: requests, Interval: dur(interval), Burst: burst, Per: per}
	}
	tests := []struct {
		name  string
		alg   Algorithm
		extra string
		want  ServiceOptions
	}{
		{"none", RoundRobin, ``, ServiceOptions{}},
		{"rate_limit defaults", RoundRobin, `"rate_limit":{"requests":10}`,
			ServiceOptions{RateLimit: rl(10, time.Second, 10, PerService)}},
		{"rate_limit in full", RoundRobin, `"rate_limit":{"requests":100,"interval":"1m","burst":20,"per":"client_ip"}`,
			ServiceOptions{RateLimit: rl(100, time.Minute, 20, PerClientIP)}},
		{"rate_limit interval in seconds", RoundRobin, `"rate_limit":{"requests":5,"interval":2}`,
			ServiceOptions{RateLimit: rl(5, 2*time.Second, 5, PerService)}},
		{"rate_limit fractional seconds", RoundRobin, `"rate_limit":{"requests":5,"interval":0.5}`,
			ServiceOptions{RateLimit: rl(5, 500*time.Millisecond, 5, PerService)}},
		{"rate_limit interval 0s is the default", RoundRobin, `"rate_limit":{"requests":5,"interval":"0s","burst":0}`,
			ServiceOptions{RateLimit: rl(5, time.Second, 5, PerService)}},
		{"rate_limit longest interval", RoundRobin, `"rate_limit":{"requests":1,"interval":"24h","per":"service"}`,
			ServiceOptions{RateLimit: rl(1, 24*time.Hour, 1, PerService)}},
		{"outlier defaults", RoundRobin, `"outlier":{}`,
			ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 5, Cooldown: dur(30 * time.Second), MaxEjectedPercent: 50}}},
		{"outlier error_rate defaults", RoundRobin, `"outlier":{"error_rate":0.5}`,
			ServiceOptions{Outlier: &Outlier{ErrorRate: 0.5, MinRequests: 10, Interval: dur(10 * time.Second),
				Cooldown: dur(30 * time.Second), MaxEjectedPercent: 50}}},
		{"outlier in full", RoundRobin,
			`"outlier":{"consecutive_failures":3,"error_rate":0.25,"min_requests":20,"interval":"1m","cooldown":"10s","max_ejected_percent":100}`,
			ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 3, ErrorRate: 0.25, MinRequests: 20, Interval: dur(time.Minute),
				Cooldown: dur(10 * time.Second), MaxEjectedPercent: 100}}},
		// 0 (or "0s") means the default, for cooldown and max_ejected_percent alike
		{"outlier cooldown 0s is the default", RoundRobin, `"outlier":{"consecutive_failures":2,"cooldown":"0s","max_ejected_percent":0}`,
			ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 2, Cooldown: dur(30 * time.Second), MaxEjectedPercent: 50}}},
		{"hash_key header", ConsistentHash, `"hash_key":"header:X-User"`, ServiceOptions{HashKey: "header:X-User"}},
		{"hash_key cookie", ConsistentHash, `"hash_key":"cookie:session"`, ServiceOptions{HashKey: "cookie:session"}},
		{"hash_key ip", IPHash, `"hash_key":"ip"`, ServiceOptions{HashKey: "ip"}},
		{"hash_key ip for consistent_hash", ConsistentHash, `"hash_key":"ip"`, ServiceOptions{HashKey: "ip"}},
		{"sticky", RoundRobin, `"sticky":true`, ServiceOptions{Sticky: true}},
		{"max_in_flight", RoundRobin, `"max_in_flight":100`, ServiceOptions{MaxInFlight: 100}},
		{"slow_start string", WeightedRoundRobin, `"slow_start":"30s"`, ServiceOptions{SlowStart: dur(30 * time.Second)}},
		{"slow_start seconds", WeightedRoundRobin, `"slow_start":45`, ServiceOptions{SlowStart: dur(45 * time.Second)}},
		{"slow_start longest", WeightedRoundRobin, `"slow_start":"24h"`, ServiceOptions{SlowStart: dur(24 * time.Hour)}},
		{"slow_start 0 is off", WeightedRoundRobin, `"slow_start":"0s"`, ServiceOptions{}},
		{"retry_budget", RoundRobin, `"retry_budget":0.2`, ServiceOptions{RetryBudget: 0.2}},
		{"retry_budget 1", RoundRobin, `"retry_budget":1`, ServiceOptions{RetryBudget: 1}},
		{"retry_budget 0", RoundRobin, `"retry_budget":0`, ServiceOptions{}},
		{"null options", RoundRobin, `"rate_limit":null,"outlier":null,"hash_key":null,"max_in_flight":null`, ServiceOptions{}},
		{"everything", LeastLatency,
			`"hash_key":"cookie:s","sticky":true,"rate_limit":{"requests":3,"per":"client_ip"},"max_in_flight":7,` +
				`"slow_start":"1m","outlier":{"error_rate":1},"retry_budget":0.1`,
			ServiceOptions{HashKey: "cookie:s", Sticky: true, RateLimit: rl(3, time.Second, 3, PerClientIP), MaxInFlight: 7,
				SlowStart: dur(time.Minute), RetryBudget: 0.1,
				Outlier: &Outlier{ErrorRate: 1, MinRequests: 10, Interval: dur(10 * time.Second), Cooldown: dur(30 * time.Second), MaxEjectedPercent: 50}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := DecodeRegistration(7, []byte(optionsBody(tt.alg, tt.extra)), nil)
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !reflect.DeepEqual(spec.Options, tt.want) {
				t.Fatalf("options = %s\nwant      %s", jsonOf(t, spec.Options), jsonOf(t, tt.want))
			}
			// Normalized options normalize to themselves, and register.
			again := spec.Options
			if err := again.Normalize(tt.alg); err != nil || !reflect.DeepEqual(again, spec.Options) {
				t.Fatalf("normalizing again: %v, %s", err, jsonOf(t, again))
			}
			svc := mustRegister(t, newTestRegistry(t, Options{}), spec)
			if !reflect.DeepEqual(svc.Options, tt.want) {
				t.Fatalf("registered options = %s", jsonOf(t, svc.Options))
			}
		})
	}

	t.Run("array body has no options", func(t *testing.T) {
		spec, err := DecodeRegistration(7, []byte(`[{"container_id":"c1","port":80}]`), named)
		if err != nil || !reflect.DeepEqual(spec.Options, ServiceOptions{}) {
			t.Fatalf("options %+v, err %v", spec.Options, err)
		}
	})
	t.Run("zones", func(t *testing.T) {
		body := `{"image_name":"app","containers":[{"container_id":"a","port":80,"zone":"eu-west-1a"},` +
			`{"container_id":"b","port":81},{"container_id":"c","port":82,"zone":""}]}`
		spec, err := DecodeRegistration(7, []byte(body), nil)
		if err != nil {
			t.Fatal(err)
		}
		if z := []string{spec.Containers[0].Zone, spec.Containers[1].Zone, spec.Containers[2].Zone}; !reflect.DeepEqual(z, []string{"eu-west-1a", "", ""}) {
			t.Fatalf("zones %q", z)
		}
		long := strings.Repeat("z", MaxNameLength)
		if _, err := DecodeRegistration(7, []byte(`[{"container_id":"a","port":80,"zone":"`+long+`"}]`), named); err != nil {
			t.Fatalf("a zone of %d characters: %v", MaxNameLength, err)
		}
	})
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDecodeOptionsRejects(t *testing.T) {
	long := strings.Repeat("z", MaxNameLength+1)
	withZone := func(zone string) string {
		return `{"image_name":"app","containers":[{"container_id":"c1","port":8080,"zone":` + zone + `}]}`
	}
	tests := []struct {
		name string
		body string
		loc  []any
		typ  string
		msg  string // a substring of the message
	}{
		{"hash_key header without name", optionsBody(ConsistentHash, `"hash_key":"header:"`),
			loc("body", "hash_key"), "value_error", `hash_key "header:": use ip, header:NAME or cookie:NAME`},
		{"hash_key md5", optionsBody(ConsistentHash, `"hash_key":"md5"`),
			loc("body", "hash_key"), "value_error", `hash_key "md5": use ip, header:NAME or cookie:NAME`},
		{"hash_key ip with a name", optionsBody(ConsistentHash, `"hash_key":"ip:x"`),
			loc("body", "hash_key"), "value_error", "use ip, header:NAME or cookie:NAME"},
		{"hash_key cookie name with a space", optionsBody(ConsistentHash, `"hash_key":"cookie:a b"`),
			loc("body", "hash_key"), "value_error", `"cookie:a b"`},
		{"hash_key header name with a colon", optionsBody(ConsistentHash, `"hash_key":"header:a:b"`),
			loc("body", "hash_key"), "value_error", "header:NAME"},
		{"ip_hash with a header key", optionsBody(IPHash, `"hash_key":"header:X-User"`),
			loc("body", "hash_key"), "value_error", "ip_hash always hashes the client IP; use consistent_hash"},
		{"rate_limit requests 0", optionsBody(RoundRobin, `"rate_limit":{"requests":0}`),
			loc("body", "rate_limit", "requests"), "value_error", "rate_limit.requests must be from 1 to 1000000000, got 0"},
		{"rate_limit without requests", optionsBody(RoundRobin, `"rate_limit":{"per":"service"}`),
			loc("body", "rate_limit", "requests"), "value_error", "rate_limit.requests must be from 1"},
		{"rate_limit requests too many", optionsBody(RoundRobin, `"rate_limit":{"requests":1000000001}`),
			loc("body", "rate_limit", "requests"), "value_error", "got 1000000001"},
		{"rate_limit interval -1s", optionsBody(RoundRobin, `"rate_limit":{"requests":10,"interval":"-1s"}`),
			loc("body", "rate_limit", "interval"), "value_error", "rate_limit.interval must be a positive duration, got -1s"},
		{"rate_limit interval 25h", optionsBody(RoundRobin, `"rate_limit":{"requests":10,"interval":"25h"}`),
			loc("body", "rate_limit", "interval"), "value_error", "rate_limit.interval must be at most 24h0m0s"},
		{"rate_limit per user", optionsBody(RoundRobin, `"rate_limit":{"requests":10,"per":"user"}`),
			loc("body", "rate_limit", "per"), "enum", `rate_limit.per "user": use service or client_ip`},
		{"rate_limit burst -1", optionsBody(RoundRobin, `"rate_limit":{"requests":10,"burst":-1}`),
			loc("body", "rate_limit", "burst"), "value_error", "rate_limit.burst must be from 0 to 1000000000, got -1"},
		{"rate_limit not an object", optionsBody(RoundRobin, `"rate_limit":"10/s"`),
			loc("body", "rate_limit"), "type_error", "expected an object"},
		{"rate_limit requests as a string", optionsBody(RoundRobin, `"rate_limit":{"requests":"10"}`),
			loc("body", "rate_limit", "requests"), "type_error", "rate_limit.requests: expected an integer"},
		{"max_in_flight -1", optionsBody(RoundRobin, `"max_in_flight":-1`),
			loc("body", "max_in_flight"), "value_error", "max_in_flight must be from 0 (no cap)"},
		{"max_in_flight as a string", optionsBody(RoundRobin, `"max_in_flight":"10"`),
			loc("body", "max_in_flight"), "type_error", "max_in_flight: expected an integer"},
		{"max_in_flight fractional", optionsBody(RoundRobin, `"max_in_flight":2.5`),
			loc("body", "max_in_flight"), "type_error", "expected an integer"},
		{"slow_start 25h", optionsBody(WeightedRoundRobin, `"slow_start":"25h"`),
			loc("body", "slow_start"), "value_error", "slow_start must be at most 24h0m0s, got 25h0m0s"},
		{"slow_start negative", optionsBody(WeightedRoundRobin, `"slow_start":"-5s"`),
			loc("body", "slow_start"), "value_error", "slow_start must be a positive duration"},
		{"slow_start seconds beyond a day", optionsBody(WeightedRoundRobin, `"slow_start":90000`),
			loc("body", "slow_start"), "value_error", "slow_start must be at most"},
		{"sticky as a string", optionsBody(RoundRobin, `"sticky":"yes"`),
			loc("body", "sticky"), "type_error", "expected true or false"},
		{"outlier not an object", optionsBody(RoundRobin, `"outlier":5`),
			loc("body", "outlier"), "type_error", "expected an object"},
		{"outlier error_rate 1.5", optionsBody(RoundRobin, `"outlier":{"error_rate":1.5}`),
			loc("body", "outlier", "error_rate"), "value_error", "outlier.error_rate must be from 0 to 1, got 1.5"},
		{"outlier error_rate negative", optionsBody(RoundRobin, `"outlier":{"error_rate":-0.1}`),
			loc("body", "outlier", "error_rate"), "value_error", "outlier.error_rate must be from 0 to 1"},
		{"outlier max_ejected_percent 101", optionsBody(RoundRobin, `"outlier":{"max_ejected_percent":101}`),
			loc("body", "outlier", "max_ejected_percent"), "value_error", "outlier.max_ejected_percent must be from 0 to 100, got 101"},
		{"outlier max_ejected_percent negative", optionsBody(RoundRobin, `"outlier":{"max_ejected_percent":-1}`),
			loc("body", "outlier", "max_ejected_percent"), "value_error", "got -1"},
		{"outlier consecutive_failures negative", optionsBody(RoundRobin, `"outlier":{"consecutive_failures":-1}`),
			loc("body", "outlier", "consecutive_failures"), "value_error", "outlier.consecutive_failures must be from 0 to 1000000"},
		{"outlier consecutive_failures too many", optionsBody(RoundRobin, `"outlier":{"consecutive_failures":1000001}`),
			loc("body", "outlier", "consecutive_failures"), "value_error", "got 1000001"},
		{"outlier min_requests negative", optionsBody(RoundRobin, `"outlier":{"min_requests":-1}`),
			loc("body", "outlier", "min_requests"), "value_error", "outlier.min_requests must be from 0"},
		{"outlier interval negative", optionsBody(RoundRobin, `"outlier":{"error_rate":0.5,"interval":"-1s"}`),
			loc("body", "outlier", "interval"), "value_error", "outlier.interval must be a positive duration"},
		{"outlier cooldown negative", optionsBody(RoundRobin, `"outlier":{"cooldown":"-1s"}`),
			loc("body", "outlier", "cooldown"), "value_error", "outlier.cooldown must be a positive duration, got -1s"},
		{"outlier cooldown 48h", optionsBody(RoundRobin, `"outlier":{"cooldown":"48h"}`),
			loc("body", "outlier", "cooldown"), "value_error", "outlier.cooldown must be at most 24h0m0s"},
		{"outlier error_rate as a string", optionsBody(RoundRobin, `"outlier":{"error_rate":"50%"}`),
			loc("body", "outlier", "error_rate"), "type_error", "outlier.error_rate: expected a number"},
		{"retry_budget 2", optionsBody(RoundRobin, `"retry_budget":2`),
			loc("body", "retry_budget"), "value_error", "retry_budget must be from 0 (no budget) to 1, got 2"},
		{"retry_budget negative", optionsBody(RoundRobin, `"retry_budget":-0.5`),
			loc("body", "retry_budget"), "value_error", "got -0.5"},
		{"retry_budget as a string", optionsBody(RoundRobin, `"retry_budget":"20%"`),
			loc("body", "retry_budget"), "type_error", "retry_budget: expected a number"},
		{"zone too long", withZone(`"` + long + `"`),
			loc("body", "containers", 0, "zone"), "string_too_long", "zone is longer than 255 characters"},
		{"zone with a control character", withZone(`"eu\u0007west"`),
			loc("body", "containers", 0, "zone"), "value_error", "zone contains a control character"},
		{"zone with a newline", withZone(`"eu\nwest"`),
			loc("body", "containers", 0, "zone"), "value_error", "zone contains a control character"},
		{"zone as a number", withZone(`5`),
			loc("body", "containers", 0, "zone"), "type_error", "zone: expected a string"},
	}
	if len(tests) < 20 {
		t.Fatalf("only %d cases", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeRegistration(7, []byte(tt.body), nil)
			checkInvalid(t, err, tt.loc)
			f := err.(*Error).Fields[0]
			if f.Type != tt.typ || !strings.Contains(f.Msg, tt.msg) {
				t.Fatalf("error %s %q, want %s containing %q", f.Type, f.Msg, tt.typ, tt.msg)
			}
			if strings.Contains(f.Msg, "ServiceOptions") {
				t.Fatalf("message names the Go struct: %q", f.Msg)
			}
		})
	}

	t.Run("every wrong option reported at once", func(t *testing.T) {
		body := optionsBody(IPHash, `"hash_key":"md5","rate_limit":{"requests":0,"per":"x"},"max_in_flight":-1,`+
			`"slow_start":"-1s","outlier":{"error_rate":2,"max_ejected_percent":200},"retry_budget":9`)
		_, err := DecodeRegistration(7, []byte(body), nil)
		wantKind(t, err, KindInvalid)
		var got [][]any
		for _, f := range err.(*Error).Fields {
			got = append(got, f.Loc)
		}
		want := [][]any{
			loc("body", "hash_key"), loc("body", "hash_key"), // not a key, and not for ip_hash
			loc("body", "rate_limit", "requests"), loc("body", "rate_limit", "per"),
			loc("body", "max_in_flight"), loc("body", "slow_start"),
			loc("body", "outlier", "error_rate"), loc("body", "outlier", "max_ejected_percent"),
			loc("body", "retry_budget"),
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("locations %v\nwant      %v", got, want)
		}
	})
}

// badDurations are JSON values that are not durations, with the field
// they are in.
var badDurations = []struct {
	name, extra string
	loc         []any
	value       string
}{
	{"rate_limit interval abc", `"rate_limit":{"requests":10,"interval":"abc"}`, loc("body", "rate_limit", "interval"), `"abc"`},
	{"slow_start empty", `"slow_start":""`, loc("body", "slow_start"), `""`},
	{"slow_start true", `"slow_start":true`, loc("body", "slow_start"), `true`},
	{"slow_start 1e300", `"slow_start":1e300`, loc("body", "slow_start"), `1e300`},
	{"cooldown 5 minutes", `"outlier":{"cooldown":"5 minutes"}`, loc("body", "outlier", "cooldown"), `"5 minutes"`},
	{"outlier interval NaN", `"outlier":{"interval":"NaN"}`, loc("body", "outlier", "interval"), `"NaN"`},
}

func TestDecodeOptionsBadDuration(t *testing.T) {
	for _, tt := range badDurations {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeRegistration(7, []byte(optionsBody(RoundRobin, tt.extra)), nil)
			wantKind(t, err, KindInvalid)
			if msg := err.Error(); !strings.Contains(msg, `such as "30s" or a number of seconds`) || !strings.Contains(msg, tt.value) {
				t.Fatalf("error %q: want what a duration looks like and the value %s", msg, tt.value)
			}
		})
	}
}

// TestDecodeOptionsBadDurationNamesTheField: an unparsable duration must be
// reported at its field, like every other option error, so that a body
// with slow_start, rate_limit.interval and outlier.cooldown says which one
// is wrong (encoding/json adds the field path only to an
// *UnmarshalTypeError).
func TestDecodeOptionsBadDurationNamesTheField(t *testing.T) {
	for _, tt := range badDurations {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeRegistration(7, []byte(optionsBody(RoundRobin, tt.extra)), nil)
			checkInvalid(t, err, tt.loc)
		})
	}
}

// TestDecodeOptionsNullDuration: JSON null leaves a duration unset, as it
// does every other option (and as encoding/json asks of an Unmarshaler:
// "implement UnmarshalJSON([]byte("null")) as a no-op"); clients that
// serialize unset optional fields as null must not be refused.
func TestDecodeOptionsNullDuration(t *testing.T) {
	for _, extra := range []string{
		`"slow_start":null`,
		`"rate_limit":{"requests":5,"interval":null}`,
		`"outlier":{"cooldown":null,"interval":null}`,
	} {
		t.Run(extra, func(t *testing.T) {
			if _, err := DecodeRegistration(7, []byte(optionsBody(RoundRobin, extra)), nil); err != nil {
				t.Fatalf("rejected: %v", err)
			}
		})
	}
	d := Duration(time.Second)
	if err := json.Unmarshal([]byte(`null`), &d); err != nil || d != Duration(time.Second) {
		t.Fatalf("unmarshal null: %v, %v; want no error and the value unchanged", err, time.Duration(d))
	}
}

func TestNormalizeOptions(t *testing.T) {
	t.Run("error locations start at loc", func(t *testing.T) {
		o := ServiceOptions{RateLimit: &RateLimit{Requests: 0}}
		err := o.Normalize(RoundRobin, "apps", 3)
		checkInvalid(t, err, loc("apps", 3, "rate_limit", "requests"))
	})
	t.Run("the caller's values stay as they were", func(t *testing.T) {
		rl, od := &RateLimit{Requests: 4}, &Outlier{}
		o := ServiceOptions{RateLimit: rl, Outlier: od}
		if err := o.Normalize(RoundRobin); err != nil {
			t.Fatal(err)
		}
		if *rl != (RateLimit{Requests: 4}) || *od != (Outlier{}) {
			t.Fatalf("Normalize changed the caller's rate_limit %+v or outlier %+v", *rl, *od)
		}
		if o.RateLimit.Burst != 4 || o.Outlier.ConsecutiveFailures != DefaultConsecutiveFailures {
			t.Fatalf("normalized %+v %+v", *o.RateLimit, *o.Outlier)
		}
	})
	t.Run("zero value", func(t *testing.T) {
		var o ServiceOptions
		if err := o.Normalize(""); err != nil || !reflect.DeepEqual(o, ServiceOptions{}) {
			t.Fatalf("zero options: %+v, %v", o, err)
		}
	})
	t.Run("hash key kind", func(t *testing.T) {
		for _, tt := range []struct{ key, kind, name string }{
			{"", "ip", ""}, {"ip", "ip", ""}, {"header:X-User", "header", "X-User"}, {"cookie:sid", "cookie", "sid"},
		} {
			if kind, name := (ServiceOptions{HashKey: tt.key}).HashKeyKind(); kind != tt.kind || name != tt.name {
				t.Errorf("HashKeyKind(%q) = %q, %q; want %q, %q", tt.key, kind, name, tt.kind, tt.name)
			}
		}
	})
}

func TestDurationJSON(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
	}{
		{`"1m30s"`, 90 * time.Second},
		{`90`, 90 * time.Second},
		{`1.5`, 1500 * time.Millisecond},
		{`"90"`, 90 * time.Second}, // a string of seconds
		{`"250ms"`, 250 * time.Millisecond},
		{`0`, 0},
		{` "2h" `, 2 * time.Hour},
	} {
		var d Duration
		if err := json.Unmarshal([]byte(tt.in), &d); err != nil || time.Duration(d) != tt.want {
			t.Errorf("unmarshal %s = %v, %v; want %v", tt.in, time.Duration(d), err, tt.want)
		}
	}
	for _, in := range []string{`"abc"`, `""`, `"NaN"`, `"Inf"`, `1e300`, `true`, `[]`, `{}`} {
		var d Duration
		if err := json.Unmarshal([]byte(in), &d); err == nil {
			t.Errorf("unmarshal %s = %v, want an error", in, time.Duration(d))
		}
	}
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{90 * time.Second, `"1m30s"`},
		{0, `"0s"`},
		{1500 * time.Millisecond, `"1.5s"`},
		{24 * time.Hour, `"24h0m0s"`},
	} {
		if b, err := json.Marshal(Duration(tt.d)); err != nil || string(b) != tt.want {
			t.Errorf("marshal %v = %s, %v; want %s", tt.d, b, err, tt.want)
		}
	}

	t.Run("options round trip", func(t *testing.T) {
		o := ServiceOptions{HashKey: "header:X-User", Sticky: true, MaxInFlight: 9, RetryBudget: 0.25,
			SlowStart: dur(90 * time.Second),
			RateLimit: &RateLimit{Requests: 10, Interval: dur(time.Minute), Burst: 3, Per: PerClientIP},
			Outlier: &Outlier{ConsecutiveFailures: 4, ErrorRate: 0.5, MinRequests: 12, Interval: dur(20 * time.Second),
				Cooldown: dur(45 * time.Second), MaxEjectedPercent: 30}}
		b, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`"slow_start":"1m30s"`, `"interval":"1m0s"`, `"cooldown":"45s"`} {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s lacks %s", b, want)
			}
		}
		var back ServiceOptions
		if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, o) {
			t.Fatalf("round trip: %+v, %v", back, err)
		}
		if b, _ := json.Marshal(ServiceOptions{}); string(b) != `{}` {
			t.Fatalf("zero options marshal to %s, want {}", b)
		}
	})
}

func TestParseDuration(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
	}{
		{"30s", 30 * time.Second}, {"1m30s", 90 * time.Second}, {"90", 90 * time.Second},
		{"0.25", 250 * time.Millisecond}, {"-1", -time.Second}, {"0", 0},
	} {
		if got, err := ParseDuration(tt.in); err != nil || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "abc", "NaN", "Inf", "-Inf", "1e300", "30 s"} {
		if got, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", in, got)
		} else if !strings.Contains(err.Error(), "number of seconds") {
			t.Errorf("ParseDuration(%q): error %q does not say what a duration looks like", in, err)
		}
	}
}

// TestStoreRoundTripOptionsAndZones: a service's options and its
// containers' zones survive the store (state, encode, decode, restore).
func TestStoreRoundTripOptionsAndZones(t *testing.T) {
	r := newTestRegistry(t, Options{})
	full := svcSpec(1, wz("a1", 2, "eu-1a"), wz("b1", 1, "eu-1b"), wz("n1", 1, ""))
	full.Algorithm = ConsistentHash
	full.Options = ServiceOptions{HashKey: "header:X-User", Sticky: true, MaxInFlight: 50, RetryBudget: 0.2,
		SlowStart: dur(30 * time.Second),
		RateLimit: &RateLimit{Requests: 100, Interval: dur(time.Minute), Per: PerClientIP},
		Outlier:   &Outlier{ErrorRate: 0.3, Cooldown: dur(5 * time.Second)}}
	hashed := svcSpec(2, wz("x", 1, "z"))
	hashed.Algorithm = IPHash
	hashed.Options = ServiceOptions{HashKey: "ip", RateLimit: &RateLimit{Requests: 5}}
	plain := svcSpec(3, wz("p", 1, "eu-1a"))
	plain.Algorithm = LeastLatency
	for _, spec := range []ServiceSpec{full, hashed, plain} {
		mustRegister(t, r, spec)
	}

	data, err := EncodeState(&State{Services: r.Records()})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"slow_start": "30s"`, `"zone": "eu-1a"`, `"hash_key": "header:X-User"`, `"per": "client_ip"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("stored state lacks %s", want)
		}
	}
	st, err := DecodeState(data)
	if err != nil {
		t.Fatal(err)
	}
	restored := newTestRegistry(t, Options{})
	if _, err := restored.Restore(&Loaded{Records: st.Services}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{1, 2, 3} {
		was, got := r.Lookup(id), restored.Lookup(id)
		if got == nil {
			t.Fatalf("service %d not restored", id)
		}
		if !reflect.DeepEqual(got.Options, was.Options) || got.Algorithm != was.Algorithm {
			t.Errorf("service %d: restored %s %s, want %s %s", id, got.Algorithm, jsonOf(t, got.Options), was.Algorithm, jsonOf(t, was.Options))
		}
		if len(got.Containers) != len(was.Containers) {
			t.Fatalf("service %d: %d containers restored, want %d", id, len(got.Containers), len(was.Containers))
		}
		for i, c := range got.Containers {
			if c.ContainerSpec != was.Containers[i].ContainerSpec {
				t.Errorf("service %d: container %+v restored, want %+v", id, c.ContainerSpec, was.Containers[i].ContainerSpec)
			}
		}
	}
	// The normalized defaults were stored, not only the given values.
	if o := restored.Lookup(1).Options; o.RateLimit.Burst != 100 || o.Outlier.MinRequests != 10 || o.Outlier.MaxEjectedPercent != 50 {
		t.Fatalf("restored defaults: %s", jsonOf(t, o))
	}

	t.Run("invalid stored options are refused", func(t *testing.T) {
		for _, change := range []func(*ServiceRecord){
			func(rec *ServiceRecord) { rec.RetryBudget = 2 },
			func(rec *ServiceRecord) { rec.RateLimit = &RateLimit{Requests: 0} },
			func(rec *ServiceRecord) { rec.HashKey = "md5" },
			func(rec *ServiceRecord) { rec.Outlier = &Outlier{ErrorRate: 3} },
			func(rec *ServiceRecord) { rec.Containers[0].Zone = strings.Repeat("z", MaxNameLength+1) },
		} {
			bad, err := DecodeState(data)
			if err != nil {
				t.Fatal(err)
			}
			change(&bad.Services[0])
			if _, err := New(Options{}).Restore(&Loaded{Records: bad.Services}); err == nil {
				t.Errorf("restored %s", jsonOf(t, bad.Services[0]))
			}
		}
	})
}
