package caddyfile_test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestCaddyfileInvalid checks that a wrong Caddyfile fails to adapt with an
// error that names the problem and the line it is on.
func TestCaddyfileInvalid(t *testing.T) {
	for _, tc := range []struct {
		name    string
		src     string
		wantErr string // a substring of the error
		line    int    // the error's Caddyfile:LINE location
	}{
		{
			name: "two default system services",
			src: `{
	imagelb {
		system_service a 127.0.0.1:1 {
			default
		}
		system_service b 127.0.0.1:2 {
			default
		}
	}
}
`,
			wantErr: "at most one may be",
			line:    7,
		},
		{
			name: "system service without an address",
			src: `{
	imagelb {
		system_service orchestrator
	}
}
`,
			wantErr: "needs a type and an address",
			line:    3,
		},
		{
			name: "system service path without a slash",
			src: `{
	imagelb {
		system_service orchestrator 127.0.0.1:3003 {
			paths auth/*
		}
	}
}
`,
			wantErr: "must start with /",
			line:    4,
		},
		{
			name: "cors origin with a path",
			src: `:3000 {
	imagelb {
		cors https://ui.example.com/app
	}
}
`,
			wantErr: "scheme://host[:port]",
			line:    3,
		},
		{
			name: "cors without an origin",
			src: `:3000 {
	imagelb {
		cors
	}
}
`,
			wantErr: "at least one origin",
			line:    3,
		},
		{
			name: "bad health_status",
			src: `{
	imagelb {
		health_status 6xx
	}
}
`,
			wantErr: `expected status "6xx"`,
			line:    3,
		},
		{
			name: "zero healthy_threshold",
			src: `{
	imagelb {
		healthy_threshold 0
	}
}
`,
			wantErr: "from 1 to 100000",
			line:    3,
		},
		{
			name: "persist maybe",
			src: `{
	imagelb {
		persist maybe
	}
}
`,
			wantErr: `persist "maybe"`,
			line:    3,
		},
		{
			name: "unknown on_corrupt_state",
			src: `{
	imagelb {
		on_corrupt_state ignore
	}
}
`,
			wantErr: `on_corrupt_state "ignore"`,
			line:    3,
		},
		{
			name: "dashboard with an argument",
			src: `:80 {
	imagelb {
		dashboard yes
	}
}
`,
			wantErr: "wrong argument count",
			line:    3,
		},
		{
			name: "bad allowed_upstreams",
			src: `{
	imagelb {
		allowed_upstreams 10.0.0.0/33
	}
}
`,
			wantErr: "not a CIDR",
			line:    3,
		},
		{
			name: "unknown algorithm",
			src: `{
	imagelb {
		algorithm fastest
	}
}
`,
			wantErr: `algorithm "fastest"`,
			line:    3,
		},
		{
			name: "unknown service algorithm",
			src: `{
	imagelb {
		service 1 web {
			algorithm fastest
		}
	}
}
`,
			wantErr: `algorithm "fastest"`,
			line:    4,
		},
		{
			name: "unknown container status",
			src: `{
	imagelb {
		service 1 web {
			container a 127.0.0.1:9001 {
				status zombie
			}
		}
	}
}
`,
			wantErr: `status "zombie"`,
			line:    5,
		},
		{
			name: "bad default_host",
			src: `{
	imagelb {
		default_host bad_host!
	}
}
`,
			wantErr: "default_host",
			line:    3,
		},
		{
			name: "max_retries too large",
			src: `{
	imagelb {
		max_retries 1000
	}
}
`,
			wantErr: "from 0 to 100",
			line:    3,
		},
		{
			name: "global unknown subdirective",
			src: `{
	imagelb {
		health_interval 30s
		bogus 1
	}
}
`,
			wantErr: "unrecognized subdirective 'bogus'",
			line:    4,
		},
		{
			name: "global arguments",
			src: `{
	imagelb extra {
		max_retries 1
	}
}
`,
			wantErr: "wrong argument count or unexpected line ending after 'extra'",
			line:    2,
		},
		{
			name: "global option repeated",
			src: `{
	imagelb {
		max_retries 1
		timeout 5s
		max_retries 2
	}
}
`,
			wantErr: "max_retries already specified",
			line:    5,
		},
		{
			name: "imagelb global option repeated",
			src: `{
	imagelb {
		max_retries 1
	}
	imagelb {
		timeout 5s
	}
}
`,
			wantErr: "imagelb global option already specified",
			line:    5,
		},
		{
			name: "health_interval not a duration",
			src: `{
	imagelb {
		health_interval soon
	}
}
`,
			wantErr: `health_interval "soon": want seconds (e.g. 30) or a duration (e.g. 30s)`,
			line:    3,
		},
		{
			name: "timeout zero",
			src: `{
	imagelb {
		timeout 0
	}
}
`,
			wantErr: `timeout "0": want seconds (e.g. 30) or a duration (e.g. 30s): must be positive`,
			line:    3,
		},
		{
			name: "health_path without slash",
			src: `{
	imagelb {
		health_path healthz
	}
}
`,
			wantErr: `health_path "healthz" must start with /`,
			line:    3,
		},
		{
			name: "health_path empty",
			src: `{
	imagelb {
		health_path ""
	}
}
`,
			wantErr: `health_path "" must start with /`,
			line:    3,
		},
		{
			name: "health_timeout missing value",
			src: `{
	imagelb {
		health_timeout
	}
}
`,
			wantErr: "wrong argument count or unexpected line ending after 'health_timeout'",
			line:    3,
		},
		{
			name: "max_retries negative",
			src: `{
	imagelb {
		max_retries -1
	}
}
`,
			wantErr: `max_retries "-1": want a whole number from 0 to`,
			line:    3,
		},
		{
			name: "max_containers two values",
			src: `{
	imagelb {
		max_containers 10 20
	}
}
`,
			wantErr: "wrong argument count or unexpected line ending after '20'",
			line:    3,
		},
		{
			name: "port_range reversed",
			src: `{
	imagelb {
		port_range 9000-8000
	}
}
`,
			wantErr: `port_range "9000-8000": want lo-hi with 1 <= lo <= hi <= 65535`,
			line:    3,
		},
		{
			name: "max_body not a size",
			src: `{
	imagelb {
		max_body lots
	}
}
`,
			wantErr: `max_body "lots": want a size such as 1MiB or 65536`,
			line:    3,
		},
		{
			name: "service non-numeric image_id",
			src: `{
	imagelb {
		service web web {
			container web-1 127.0.0.1:9001
		}
	}
}
`,
			wantErr: `service image_id "web" must be a positive integer`,
			line:    3,
		},
		{
			name: "service without image_name",
			src: `{
	imagelb {
		service 1
	}
}
`,
			wantErr: "service needs an image_id and an image_name",
			line:    3,
		},
		{
			name: "service option repeated",
			src: `{
	imagelb {
		service 1 web {
			external_port 8001
			external_port 8002
		}
	}
}
`,
			wantErr: "external_port already specified",
			line:    5,
		},
		{
			name: "service repeated",
			src: `{
	imagelb {
		service 1 web {
			container web-1 127.0.0.1:9001
		}
		service 1 web-again
	}
}
`,
			wantErr: "service 1 already specified",
			line:    6,
		},
		{
			name: "container repeated",
			src: `{
	imagelb {
		service 1 web {
			container web-1 127.0.0.1:9001
			container web-2 127.0.0.1:9002
			container web-1 127.0.0.1:9003
		}
	}
}
`,
			wantErr: `container "web-1" already specified`,
			line:    6,
		},
		{
			name: "service external_port out of range",
			src: `{
	imagelb {
		service 1 web {
			external_port 70000
		}
	}
}
`,
			wantErr: `external_port "70000": want a whole number from 1 to 65535`,
			line:    4,
		},
		{
			name: "service unknown subdirective",
			src: `{
	imagelb {
		service 1 web {
			containers web-1 127.0.0.1:9001
		}
	}
}
`,
			wantErr: "unrecognized subdirective 'containers'",
			line:    4,
		},
		{
			name: "container without port",
			src: `{
	imagelb {
		service 1 web {
			container web-1 127.0.0.1
		}
	}
}
`,
			wantErr: `container address "127.0.0.1": want host:port, e.g. 127.0.0.1:9001`,
			line:    4,
		},
		{
			name: "container with scheme",
			src: `{
	imagelb {
		service 1 web {
			container web-1 http://127.0.0.1:9001
		}
	}
}
`,
			wantErr: `container address "http://127.0.0.1:9001": want host:port`,
			line:    4,
		},
		{
			name: "container udp network",
			src: `{
	imagelb {
		service 1 web {
			container web-1 udp/127.0.0.1:9001
		}
	}
}
`,
			wantErr: `container address "udp/127.0.0.1:9001": want host:port`,
			line:    4,
		},
		{
			name: "container port range",
			src: `{
	imagelb {
		service 1 web {
			container web-1 127.0.0.1:9001-9002
		}
	}
}
`,
			wantErr: `container address "127.0.0.1:9001-9002": want host:port`,
			line:    4,
		},
		{
			name: "container without address",
			src: `{
	imagelb {
		service 1 web {
			container web-1
		}
	}
}
`,
			wantErr: "container needs an id and an address",
			line:    4,
		},
		{
			name: "container weight out of range",
			src: `{
	imagelb {
		service 1 web {
			container web-1 127.0.0.1:9001 {
				weight 1001
			}
		}
	}
}
`,
			wantErr: `weight "1001": want a whole number from 0 to 1000`,
			line:    5,
		},
		{
			name: "container option repeated",
			src: `{
	imagelb {
		service 1 web {
			container web-1 127.0.0.1:9001 {
				status healthy
				status draining
			}
		}
	}
}
`,
			wantErr: "status already specified",
			line:    6,
		},
		{
			name: "container unknown subdirective",
			src: `{
	imagelb {
		service 1 web {
			container web-1 127.0.0.1:9001 {
				region eu
			}
		}
	}
}
`,
			wantErr: "unrecognized subdirective 'region'",
			line:    5,
		},
		{
			name: "api maybe",
			src: `:3000 {
	imagelb {
		api maybe
	}
}
`,
			wantErr: `api "maybe": use on, read_only or off`,
			line:    3,
		},
		{
			name: "api repeated",
			src: `:3000 {
	imagelb {
		api on
		api off
	}
}
`,
			wantErr: "api already specified",
			line:    4,
		},
		{
			name: "api without value",
			src: `:3000 {
	imagelb {
		api
	}
}
`,
			wantErr: "wrong argument count or unexpected line ending after 'api'",
			line:    3,
		},
		{
			name: "handler unknown subdirective",
			src: `:3000 {
	imagelb {
		metrics on
	}
}
`,
			wantErr: "unrecognized subdirective 'metrics'",
			line:    3,
		},
		{
			name: "handler argument",
			src: `:3000 {
	imagelb on
}
`,
			wantErr: "wrong argument count or unexpected line ending after 'on'",
			line:    2,
		},
		{
			name: "dynamic imagelb without id",
			src: `:3001 {
	reverse_proxy {
		dynamic imagelb
		lb_policy imagelb
	}
}
`,
			wantErr: "wrong argument count or unexpected line ending after 'imagelb'",
			line:    3,
		},
		{
			name: "dynamic imagelb two ids",
			src: `:3001 {
	reverse_proxy {
		dynamic imagelb 1 2
	}
}
`,
			wantErr: "wrong argument count or unexpected line ending after '2'",
			line:    3,
		},
		{
			name: "dynamic imagelb with block",
			src: `:3001 {
	reverse_proxy {
		dynamic imagelb 1 {
			refresh 5s
		}
	}
}
`,
			wantErr: "unrecognized subdirective 'refresh': dynamic imagelb takes only an image_id",
			line:    4,
		},
		{
			name: "lb_policy imagelb with argument",
			src: `:3001 {
	reverse_proxy {
		dynamic imagelb 1
		lb_policy imagelb fast
	}
}
`,
			wantErr: "wrong argument count or unexpected line ending after 'fast'",
			line:    4,
		},
		{
			name: "lb_policy imagelb with block",
			src: `:3001 {
	reverse_proxy {
		dynamic imagelb 1
		lb_policy imagelb {
			fallback first
		}
	}
}
`,
			wantErr: "unrecognized subdirective 'fallback': lb_policy imagelb takes no options",
			line:    5,
		},
		{
			name: "rate_limit zero requests",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 0/1s
		}
	}
}
`,
			wantErr: `rate_limit "0/1s": the requests must be a whole number from 1`,
			line:    4,
		},
		{
			name: "rate_limit negative requests",
			src: `{
	imagelb {
		service 1 web {
			rate_limit -5/1s
		}
	}
}
`,
			wantErr: `rate_limit "-5/1s": the requests`,
			line:    4,
		},
		{
			name: "rate_limit bad interval",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100/abc
		}
	}
}
`,
			wantErr: `rate_limit "100/abc": the interval must be a positive duration`,
			line:    4,
		},
		{
			name: "rate_limit zero interval",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100/0s
		}
	}
}
`,
			wantErr: `rate_limit "100/0s": the interval must be a positive duration`,
			line:    4,
		},
		{
			name: "rate_limit interval too long",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100/48h
		}
	}
}
`,
			wantErr: "at most 24h0m0s",
			line:    4,
		},
		{
			name: "rate_limit without slash",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100
		}
	}
}
`,
			wantErr: `rate_limit "100": want <requests>/<interval>`,
			line:    4,
		},
		{
			name: "rate_limit without arguments",
			src: `{
	imagelb {
		service 1 web {
			rate_limit
		}
	}
}
`,
			wantErr: "wrong argument count",
			line:    4,
		},
		{
			name: "rate_limit unknown per",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100/1s per user
		}
	}
}
`,
			wantErr: `rate_limit per "user": use service or client_ip`,
			line:    4,
		},
		{
			name: "rate_limit negative burst",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100/1s burst -1
		}
	}
}
`,
			wantErr: `rate_limit burst "-1": want a whole number from 1`,
			line:    4,
		},
		{
			name: "rate_limit zero burst",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100/1s burst 0
		}
	}
}
`,
			wantErr: `rate_limit burst "0"`,
			line:    4,
		},
		{
			name: "rate_limit burst without value",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100/1s per service burst
		}
	}
}
`,
			wantErr: "rate_limit: burst needs a value",
			line:    4,
		},
		{
			name: "rate_limit burst repeated",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100/1s burst 5 burst 6
		}
	}
}
`,
			wantErr: "rate_limit: burst already specified",
			line:    4,
		},
		{
			name: "rate_limit unknown word",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100/1s every 2
		}
	}
}
`,
			wantErr: `rate_limit: unknown "every"`,
			line:    4,
		},
		{
			name: "rate_limit repeated",
			src: `{
	imagelb {
		service 1 web {
			rate_limit 100/1s
			max_in_flight 5
			rate_limit 10/1s
		}
	}
}
`,
			wantErr: "rate_limit already specified",
			line:    6,
		},
		{
			name: "hash_key unknown kind",
			src: `{
	imagelb {
		service 1 web {
			hash_key user
		}
	}
}
`,
			wantErr: `hash_key "user": use ip, header:NAME or cookie:NAME`,
			line:    4,
		},
		{
			name: "hash_key header without name",
			src: `{
	imagelb {
		service 1 web {
			hash_key header:
		}
	}
}
`,
			wantErr: `hash_key "header:"`,
			line:    4,
		},
		{
			name: "hash_key bad cookie name",
			src: `{
	imagelb {
		service 1 web {
			hash_key cookie:a/b
		}
	}
}
`,
			wantErr: `hash_key "cookie:a/b"`,
			line:    4,
		},
		{
			name: "hash_key ip with name",
			src: `{
	imagelb {
		service 1 web {
			hash_key ip:x
		}
	}
}
`,
			wantErr: `hash_key "ip:x"`,
			line:    4,
		},
		{
			name: "hash_key header with ip_hash",
			src: `{
	imagelb {
		service 1 web {
			hash_key header:X-User
			algorithm ip_hash
		}
	}
}
`,
			wantErr: `hash_key "header:X-User": ip_hash always hashes the client IP`,
			line:    4,
		},
		{
			name: "hash_key cookie with global ip_hash",
			src: `{
	imagelb {
		service 1 web {
			hash_key cookie:session
		}
		algorithm ip_hash
	}
}
`,
			wantErr: `hash_key "cookie:session": the global algorithm ip_hash always hashes the client IP`,
			line:    4,
		},
		{
			name: "sticky with argument",
			src: `{
	imagelb {
		service 1 web {
			sticky on
		}
	}
}
`,
			wantErr: "wrong argument count or unexpected line ending after 'on'",
			line:    4,
		},
		{
			name: "sticky repeated",
			src: `{
	imagelb {
		service 1 web {
			sticky
			sticky
		}
	}
}
`,
			wantErr: "sticky already specified",
			line:    5,
		},
		{
			name: "negative max_in_flight",
			src: `{
	imagelb {
		service 1 web {
			max_in_flight -1
		}
	}
}
`,
			wantErr: `max_in_flight "-1": want a whole number from 0 to 1000000000`,
			line:    4,
		},
		{
			name: "negative slow_start",
			src: `{
	imagelb {
		service 1 web {
			slow_start -5s
		}
	}
}
`,
			wantErr: `slow_start "-5s": want a duration from 0 to 24h0m0s`,
			line:    4,
		},
		{
			name: "slow_start not a duration",
			src: `{
	imagelb {
		service 1 web {
			slow_start soon
		}
	}
}
`,
			wantErr: `slow_start "soon": want a duration such as 30s`,
			line:    4,
		},
		{
			name: "slow_start too long",
			src: `{
	imagelb {
		service 1 web {
			slow_start 48h
		}
	}
}
`,
			wantErr: `slow_start "48h": want a duration from 0 to 24h0m0s`,
			line:    4,
		},
		{
			name: "outlier with argument",
			src: `{
	imagelb {
		service 1 web {
			outlier on
		}
	}
}
`,
			wantErr: "wrong argument count or unexpected line ending after 'on'",
			line:    4,
		},
		{
			name: "outlier repeated",
			src: `{
	imagelb {
		service 1 web {
			outlier
			outlier {
				cooldown 5s
			}
		}
	}
}
`,
			wantErr: "outlier already specified",
			line:    5,
		},
		{
			name: "outlier unknown subdirective",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				window 10s
			}
		}
	}
}
`,
			wantErr: "unrecognized subdirective 'window'",
			line:    5,
		},
		{
			name: "outlier option repeated",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				cooldown 5s
				cooldown 6s
			}
		}
	}
}
`,
			wantErr: "cooldown already specified",
			line:    6,
		},
		{
			name: "outlier error_rate above 1",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				error_rate 1.5
			}
		}
	}
}
`,
			wantErr: `error_rate "1.5": want a share from 0 to 1`,
			line:    5,
		},
		{
			name: "outlier error_rate above 100%",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				error_rate 150%
			}
		}
	}
}
`,
			wantErr: `error_rate "150%"`,
			line:    5,
		},
		{
			name: "outlier error_rate NaN",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				error_rate NaN
			}
		}
	}
}
`,
			wantErr: `error_rate "NaN"`,
			line:    5,
		},
		{
			name: "outlier negative consecutive_failures",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				consecutive_failures -1
			}
		}
	}
}
`,
			wantErr: `consecutive_failures "-1": want a whole number from 1 to 1000000`,
			line:    5,
		},
		{
			name: "outlier zero min_requests",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				min_requests 0
			}
		}
	}
}
`,
			wantErr: `min_requests "0": want a whole number from 1`,
			line:    5,
		},
		{
			name: "outlier max_ejected_percent above 100",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				max_ejected_percent 101
			}
		}
	}
}
`,
			wantErr: `max_ejected_percent "101": want a whole number from 1 to 100`,
			line:    5,
		},
		{
			name: "outlier negative max_ejected_percent",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				max_ejected_percent -1
			}
		}
	}
}
`,
			wantErr: `max_ejected_percent "-1"`,
			line:    5,
		},
		{
			name: "outlier zero cooldown",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				cooldown 0
			}
		}
	}
}
`,
			wantErr: `cooldown "0": want a positive duration of at most 24h0m0s`,
			line:    5,
		},
		{
			name: "outlier interval not a duration",
			src: `{
	imagelb {
		service 1 web {
			outlier {
				interval 10q
			}
		}
	}
}
`,
			wantErr: `interval "10q": want a duration such as 30s`,
			line:    5,
		},
		{
			name: "retry_budget above 1",
			src: `{
	imagelb {
		service 1 web {
			retry_budget 1.2
		}
	}
}
`,
			wantErr: `retry_budget "1.2": want a share from 0 to 1 (e.g. 0.2) or a percentage (e.g. 20%)`,
			line:    4,
		},
		{
			name: "negative retry_budget",
			src: `{
	imagelb {
		service 1 web {
			retry_budget -0.1
		}
	}
}
`,
			wantErr: `retry_budget "-0.1"`,
			line:    4,
		},
		{
			name: "retry_budget above 100%",
			src: `{
	imagelb {
		service 1 web {
			retry_budget 120%
		}
	}
}
`,
			wantErr: `retry_budget "120%"`,
			line:    4,
		},
		{
			name: "retry_budget not a number",
			src: `{
	imagelb {
		service 1 web {
			retry_budget lots
		}
	}
}
`,
			wantErr: `retry_budget "lots"`,
			line:    4,
		},
		{
			name: "empty container zone",
			src: `{
	imagelb {
		service 1 web {
			container a 127.0.0.1:9001 {
				zone ""
			}
		}
	}
}
`,
			wantErr: `zone "" must be 1-255 characters`,
			line:    5,
		},
		{
			name: "container zone repeated",
			src: `{
	imagelb {
		service 1 web {
			container a 127.0.0.1:9001 {
				zone a
				zone b
			}
		}
	}
}
`,
			wantErr: "zone already specified",
			line:    6,
		},
		{
			name: "global zone repeated",
			src: `{
	imagelb {
		zone a
		zone b
	}
}
`,
			wantErr: "zone already specified",
			line:    4,
		},
		{
			name: "global zone without argument",
			src: `{
	imagelb {
		zone
	}
}
`,
			wantErr: "wrong argument count",
			line:    3,
		},
		{
			name: "bad zone_header",
			src: `{
	imagelb {
		zone_header X:Zone
	}
}
`,
			wantErr: `zone_header "X:Zone": want a request header name`,
			line:    3,
		},
		{
			name: "empty sticky_secret",
			src: `{
	imagelb {
		sticky_secret ""
	}
}
`,
			wantErr: "sticky_secret is empty",
			line:    3,
		},
		{
			name: "sticky_secret two arguments",
			src: `{
	imagelb {
		sticky_secret a b
	}
}
`,
			wantErr: "wrong argument count or unexpected line ending after 'b'",
			line:    3,
		},
		{
			name: "unknown algorithm lists all",
			src: `{
	imagelb {
		algorithm fastest
	}
}
`,
			wantErr: `algorithm "fastest": use round_robin, weighted_round_robin, least_connections (alias least_conn), random, power_of_two, ip_hash, consistent_hash or least_latency`,
			line:    3,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tc.src), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				t.Fatalf("adapting succeeded, want an error containing %q", tc.wantErr)
			}
			msg := err.Error()
			t.Logf("error: %s", msg)
			if !strings.Contains(msg, tc.wantErr) {
				t.Errorf("error %q does not contain %q", msg, tc.wantErr)
			}
			// the location must be exactly this line (Caddyfile:3, not Caddyfile:30)
			loc := regexp.MustCompile(`\bCaddyfile:` + strconv.Itoa(tc.line) + `\b`)
			if !loc.MatchString(msg) {
				t.Errorf("error %q does not point at Caddyfile:%d", msg, tc.line)
			}
		})
	}
}
