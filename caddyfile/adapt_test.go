// Package caddyfile_test holds the Caddyfile→JSON adapt fixtures of the
// imagelb plugin and the loop test that runs them. Each fixture is a file
// testdata/NAME.caddytest: a Caddyfile, a line "----------", then the JSON
// that Caddy's caddyfile adapter must produce from it (indented with tabs).
// A Caddyfile that must fail to adapt is a file testdata/invalid/NAME.caddyfile
// instead (see TestCaddyfileInvalid). A new case is a new file.
//
// After a deliberate change to the adapter output, maintainers regenerate the
// expected JSON with
//
//	go test ./caddyfile/ -run TestCaddyfileAdaptToJSON -update
//
// and read the diff before committing it.
package caddyfile_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/imagelb/caddy-imagelb"
)

var update = flag.Bool("update", false, "rewrite the expected JSON of testdata/*.caddytest from the adapter's output")

// separator divides a fixture's Caddyfile from its expected JSON.
const separator = "----------"

func TestCaddyfileAdaptToJSON(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.caddytest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no fixtures found in testdata/*.caddytest")
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".caddytest"), func(t *testing.T) {
			caddyfileText, expected := readFixture(t, file)

			got, warnings, err := adapt(caddyfileText)
			if err != nil {
				t.Fatalf("adapting %s: %v", file, err)
			}
			// a fixture is formatted (caddy fmt) and adapts without warnings
			for _, w := range warnings {
				t.Errorf("%s:%d: adapter warning: %s", file, w.Line, w.Message)
			}

			if *update {
				out := caddyfileText + separator + "\n" + got + "\n"
				if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !caddytest.CompareAdapt(t, file, caddyfileText, "caddyfile", expected) {
				t.Errorf("%s: adapted JSON differs from the expected JSON (diff on stdout: - expected, + got); "+
					"if the change is intended, run: go test ./caddyfile/ -run TestCaddyfileAdaptToJSON -update", file)
			}
		})
	}
}

// readFixture splits a fixture into its Caddyfile (ending in one newline, as
// caddy fmt leaves it) and its expected JSON.
func readFixture(t *testing.T, file string) (caddyfileText, expected string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\r\n", "\n")
	before, after, ok := strings.Cut(text, "\n"+separator+"\n")
	if !ok {
		t.Fatalf("%s: no %q line between the Caddyfile and the expected JSON", file, separator)
	}
	return strings.TrimSpace(before) + "\n", strings.TrimSpace(after)
}

// adapt runs the caddyfile adapter and indents its output as CompareAdapt does.
func adapt(caddyfileText string) (string, []caddyconfig.Warning, error) {
	result, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return "", warnings, err
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, result, "", "\t"); err != nil {
		return "", warnings, err
	}
	return pretty.String(), warnings, nil
}
