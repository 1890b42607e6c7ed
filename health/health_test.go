package health

import (
	"strings"
	"testing"
	"time"
)

func TestParseStatusRange(t *testing.T) {
	tests := []struct {
		in      string
		lo, hi  int
		wantErr bool
	}{
		// a code
		{in: "200", lo: 200, hi: 200},
		{in: "404", lo: 404, hi: 404},
		{in: "100", lo: 100, hi: 100},
		{in: "599", lo: 599, hi: 599},
		// a class
		{in: "1xx", lo: 100, hi: 199},
		{in: "2xx", lo: 200, hi: 299},
		{in: "5xx", lo: 500, hi: 599},
		// a range
		{in: "200-399", lo: 200, hi: 399},
		{in: "200-200", lo: 200, hi: 200},
		{in: "100-599", lo: 100, hi: 599},

		{in: "", wantErr: true},
		{in: "abc", wantErr: true},
		{in: "6xx", wantErr: true},
		{in: "0xx", wantErr: true},
		{in: "2XX", wantErr: true},
		{in: "2x", wantErr: true},
		{in: "2xxx", wantErr: true},
		{in: "20", wantErr: true},
		{in: "99", wantErr: true},
		{in: "600", wantErr: true},
		{in: "1000", wantErr: true},
		{in: "0200", wantErr: true},
		{in: "+200", wantErr: true},
		{in: "-200", wantErr: true},
		{in: " 200", wantErr: true},
		{in: "200 ", wantErr: true},
		{in: "200-", wantErr: true},
		{in: "-399", wantErr: true},
		{in: "299-200", wantErr: true},
		{in: "200-600", wantErr: true},
		{in: "50-200", wantErr: true},
		{in: "200--300", wantErr: true},
		{in: "200 - 399", wantErr: true},
		{in: "200-399x", wantErr: true},
		{in: "2xx-3xx", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			lo, hi, err := ParseStatusRange(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseStatusRange(%q) = %d, %d, want an error", tt.in, lo, hi)
				}
				// the error names the input and says what is expected
				if msg := err.Error(); !strings.Contains(msg, `"`+tt.in+`"`) || !strings.Contains(msg, "2xx") {
					t.Errorf("error %q does not name the input and the accepted forms", msg)
				}
				if lo != 0 || hi != 0 {
					t.Errorf("ParseStatusRange(%q) returned %d, %d with an error, want 0, 0", tt.in, lo, hi)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseStatusRange(%q): %v", tt.in, err)
			}
			if lo != tt.lo || hi != tt.hi {
				t.Errorf("ParseStatusRange(%q) = %d, %d, want %d, %d", tt.in, lo, hi, tt.lo, tt.hi)
			}
		})
	}
}

func TestConfigWithDefaults(t *testing.T) {
	defaults := Config{
		Interval:           DefaultInterval,
		Timeout:            DefaultTimeout,
		Path:               DefaultPath,
		ExpectLo:           200,
		ExpectHi:           299,
		HealthyThreshold:   DefaultHealthyThreshold,
		UnhealthyThreshold: DefaultUnhealthyThreshold,
		MaxConcurrent:      DefaultMaxConcurrent,
		MaxFails:           0, // left as it is: 0 means passive checks off
		FailDuration:       DefaultFailDuration,
	}
	custom := Config{
		Interval:           time.Second,
		Timeout:            time.Millisecond,
		Path:               "/ready",
		ExpectLo:           200,
		ExpectHi:           399,
		HealthyThreshold:   2,
		UnhealthyThreshold: 3,
		MaxConcurrent:      4,
		MaxFails:           5,
		FailDuration:       time.Minute,
	}
	tests := []struct {
		name string
		in   Config
		want Config
	}{
		{name: "zero config gets every default", in: Config{}, want: defaults},
		{name: "set fields are kept", in: custom, want: custom},
		{
			name: "negative values get the default",
			in: Config{Interval: -time.Second, Timeout: -1, HealthyThreshold: -1, UnhealthyThreshold: -2,
				MaxConcurrent: -3, FailDuration: -time.Minute},
			want: defaults,
		},
		{
			name: "max_fails is never defaulted",
			in:   Config{MaxFails: -1},
			want: func() Config { c := defaults; c.MaxFails = -1; return c }(),
		},
		{
			name: "an expected code is kept",
			in:   Config{ExpectLo: 204, ExpectHi: 204},
			want: func() Config { c := defaults; c.ExpectLo, c.ExpectHi = 204, 204; return c }(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			got := tt.in.WithDefaults()
			if got != tt.want {
				t.Errorf("WithDefaults() =\n%+v\nwant\n%+v", got, tt.want)
			}
			if in != tt.in {
				t.Errorf("WithDefaults modified its receiver: %+v", tt.in)
			}
			if again := got.WithDefaults(); again != got {
				t.Errorf("WithDefaults is not idempotent: %+v then %+v", got, again)
			}
		})
	}
}

// TestDefaultExpectStatus keeps the documented default parseable: WithDefaults
// ignores the error of ParseStatusRange(DefaultExpectStatus).
func TestDefaultExpectStatus(t *testing.T) {
	lo, hi, err := ParseStatusRange(DefaultExpectStatus)
	if err != nil || lo != 200 || hi != 299 {
		t.Fatalf("ParseStatusRange(%q) = %d, %d, %v, want 200, 299, nil", DefaultExpectStatus, lo, hi, err)
	}
}
