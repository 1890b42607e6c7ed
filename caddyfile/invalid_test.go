package caddyfile_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// invalidDir holds the fixtures of TestCaddyfileInvalid, one NAME.caddyfile a case.
var invalidDir = filepath.Join("testdata", "invalid")

const (
	invalidExt   = ".caddyfile"
	headerError  = "# error: "
	headerLine   = "# line: "
	headerFormat = headerError + "SUBSTRING OF THE ERROR\n" + headerLine + "LINE\n"
)

// TestCaddyfileInvalid checks that a wrong Caddyfile fails to adapt with an
// error that names the problem and the line it is on. Each case is a file
// testdata/invalid/NAME.caddyfile that starts with a two-line header
//
//	# error: SUBSTRING OF THE ERROR
//	# line: LINE
//
// followed by the Caddyfile. The loop strips the header before adapting, so
// LINE counts the lines of the Caddyfile below the header (its first line is
// line 1), not of the fixture file. Only those two leading lines are the
// header: a "#" line after them is part of the Caddyfile. A new case is a new
// file; one with a missing or malformed header fails.
func TestCaddyfileInvalid(t *testing.T) {
	entries, err := os.ReadDir(invalidDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatalf("no fixtures found in %s", invalidDir)
	}
	for _, entry := range entries {
		t.Run(strings.TrimSuffix(entry.Name(), invalidExt), func(t *testing.T) {
			file := filepath.Join(invalidDir, entry.Name())
			if entry.IsDir() || !strings.HasSuffix(entry.Name(), invalidExt) {
				t.Fatalf("%s: not a fixture; every file in %s is NAME%s", file, invalidDir, invalidExt)
			}
			wantErr, line, src := readInvalidFixture(t, file)

			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				t.Fatalf("adapting succeeded, want an error containing %q", wantErr)
			}
			msg := err.Error()
			t.Logf("error: %s", msg)
			if !strings.Contains(msg, wantErr) {
				t.Errorf("%s: error %q does not contain %q", file, msg, wantErr)
			}
			// the location must be exactly this line (Caddyfile:3, not Caddyfile:30)
			loc := regexp.MustCompile(`\bCaddyfile:` + strconv.Itoa(line) + `\b`)
			if !loc.MatchString(msg) {
				t.Errorf("%s: error %q does not point at Caddyfile:%d", file, msg, line)
			}
		})
	}
}

// readInvalidFixture splits a fixture into the header's expected error
// substring and line, and the Caddyfile below the header, byte for byte.
func readInvalidFixture(t *testing.T, file string) (wantErr string, line int, src string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\r\n", "\n")
	first, rest, _ := strings.Cut(text, "\n")
	second, src, _ := strings.Cut(rest, "\n")

	wantErr, ok := strings.CutPrefix(first, headerError)
	if !ok || strings.TrimSpace(wantErr) == "" {
		t.Fatalf("%s:1: got %q, want the header\n%s", file, first, headerFormat)
	}
	number, ok := strings.CutPrefix(second, headerLine)
	line, err = strconv.Atoi(number)
	if !ok || err != nil || line < 1 {
		t.Fatalf("%s:2: got %q, want the header\n%s(LINE a whole number from 1)", file, second, headerFormat)
	}
	if strings.TrimSpace(src) == "" {
		t.Fatalf("%s: no Caddyfile below the header", file)
	}
	if n := strings.Count(strings.TrimSuffix(src, "\n"), "\n") + 1; line > n {
		t.Fatalf("%s:2: line %d is past the end of the Caddyfile (%d lines); LINE counts from the first line below the header", file, line, n)
	}
	return wantErr, line, src
}
