package imagelb

import (
	"os"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestFDWatchOncePerBurst: one WARN, naming the limit, when open files
// reach 90% of it, none while they stay high, one INFO once they are below
// 80%, and a new WARN for the next burst.
func TestFDWatchOncePerBurst(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	open := 0
	w := &fdWatch{open: func() (int, error) { return open, nil }, limit: func() (uint64, error) { return 1000, nil }, logger: zap.New(core)}
	steps := []struct {
		open int
		want string // the level logged by this check, "" for none
	}{
		{100, ""}, {899, ""}, {900, "warn"}, {1000, ""}, {850, ""}, {800, ""}, {799, "info"}, {500, ""}, {950, "warn"},
	}
	for _, s := range steps {
		open = s.open
		w.check()
		entries := logs.TakeAll()
		got := ""
		if len(entries) > 1 {
			t.Fatalf("%d open: %d log lines", s.open, len(entries))
		}
		if len(entries) == 1 {
			got = entries[0].Level.String()
			if got == "warn" && !strings.Contains(entries[0].Message, "limit of 1000") {
				t.Fatalf("the warning does not name the limit: %q", entries[0].Message)
			}
		}
		if got != s.want {
			t.Fatalf("%d open files: logged %q, want %q", s.open, got, s.want)
		}
	}
}

// TestOpenFilesCounts: the real counter sees a file opened.
func TestOpenFilesCounts(t *testing.T) {
	before, err := openFiles()
	if err != nil {
		t.Skipf("no /proc/self/fd here: %v", err)
	}
	f, err := openTemp(t)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if after, _ := openFiles(); after != before+1 {
		t.Fatalf("%d open files after opening one, %d before", after, before)
	}
	if lim, err := fileLimit(); err != nil || lim == 0 {
		t.Fatalf("fileLimit: %d, %v", lim, err)
	}
}

func openTemp(t *testing.T) (*os.File, error) {
	return os.CreateTemp(t.TempDir(), "fd")
}
