package demo

import (
	"strings"
	"testing"
)

// TestValidateContainer checks that a demo orchestrator without a usable
// container address is refused with an error saying what to write.
func TestValidateContainer(t *testing.T) {
	for _, c := range []struct {
		name, container, want string
	}{
		{"missing", "", "the demo container's host:port is required"},
		{"no port", "127.0.0.1", "want host:port"},
		{"port zero", "127.0.0.1:0", "from 1 to 65535"},
		{"port too high", "127.0.0.1:65536", "from 1 to 65535"},
		{"not a host", "http://x:80", "want host:port"},
		{"bad hostname", "a b:80", "not a valid hostname"},
		{"valid", "127.0.0.1:9004", ""},
		{"valid name", "localhost:9004", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := (&Orchestrator{Container: c.container}).Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("Validate(%q): %v", c.container, err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("Validate(%q): %v, want an error containing %q", c.container, err, c.want)
			}
		})
	}
}
