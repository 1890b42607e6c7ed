package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var profileConns = flag.Int("profile-conns", 32, "wrk connections while profiling")

// profileDir keeps the raw profiles of the last run for go tool pprof (they
// are not committed; their tops are, in the report).
var profileDir = filepath.Join(os.TempDir(), "imagelb-bench-profiles")

// profiles measures allocations per request (imagelb, its dynamic upstreams,
// stock Caddy, the Go reference) as the difference of two heap profiles
// around one wrk run, each taken after a GC (/debug/pprof/heap?gc=1: its
// alloc_* counts are cumulative), and CPU profiles of imagelb and the Go
// reference under the same load.
func (e *env) profiles(ts *targets) (string, error) {
	if err := os.MkdirAll(profileDir, 0o755); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Allocations per request (wrk -t1 -c%d -d%s; heap profiles before and after, from /debug/pprof)\n\n", *profileConns, *duration)
	b.WriteString("Allocations and bytes are the profile's totals (Go samples one allocation per 512 KiB and scales the\n")
	b.WriteString("samples up: an estimate, good to a few percent at these counts) divided by wrk's requests. Background work\n")
	b.WriteString("during the run (health checks are hourly here) is included and negligible.\n\n")
	b.WriteString("| target | requests | allocations / req | bytes / req | allocations ÷ stock Caddy | bytes ÷ stock Caddy |\n|---|---|---|---|---|---|\n")
	type allocs struct {
		t                  target
		requests           int
		objects, bytes     float64
		objectTop, byteTop string
		objCmd, byteCmd    string
	}
	var all []allocs
	for _, t := range []target{ts.imagelb, ts.dynamic, ts.stock, ts.goref} {
		slug := slugOf(t.name)
		before, after := filepath.Join(profileDir, slug+"-heap-before.pprof"), filepath.Join(profileDir, slug+"-heap-after.pprof")
		if err := fetch(t.pprof+"/heap?gc=1", before); err != nil {
			return "", fmt.Errorf("%s: %v", t.name, err)
		}
		s, err := wrk(t.url, *profileConns, t.pid, *duration, "")
		if err != nil {
			return "", err
		}
		if err := fetch(t.pprof+"/heap?gc=1", after); err != nil {
			return "", fmt.Errorf("%s: %v", t.name, err)
		}
		a := allocs{t: t, requests: s.requests}
		for _, idx := range []string{"alloc_objects", "alloc_space"} {
			args := []string{"tool", "pprof", "-sample_index=" + idx, "-top", "-nodecount=15", "-base", before, t.binary, after}
			top, err := exec.Command("go", args...).CombinedOutput()
			if err != nil {
				return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, top)
			}
			total, err := pprofTotal(string(top))
			if err != nil {
				return "", fmt.Errorf("%s: %v", t.name, err)
			}
			text := perRequestTop(string(top), s.requests)
			cmd := "go " + strings.Join(shorten(args), " ")
			if idx == "alloc_objects" {
				a.objects, a.objectTop, a.objCmd = total, text, cmd
			} else {
				a.bytes, a.byteTop, a.byteCmd = total, text, cmd
			}
		}
		all = append(all, a)
	}
	stock := all[2]
	for _, a := range all {
		n := float64(max(a.requests, 1))
		fmt.Fprintf(&b, "| %s | %d | %.1f | %.0f | %.2f | %.2f |\n", a.t.name, a.requests, a.objects/n, a.bytes/n,
			a.objects/stock.objects*float64(stock.requests)/n, a.bytes/stock.bytes*float64(stock.requests)/n)
	}
	b.WriteString("\nThe top allocation sites of each (flat), with a column added: the site's allocations or bytes per request.\n\n")
	for _, a := range all {
		fmt.Fprintf(&b, "### %s\n\n`%s`\n\n```\n%s```\n\n`%s`\n\n```\n%s```\n\n", a.t.name, a.objCmd, a.objectTop, a.byteCmd, a.byteTop)
	}

	fmt.Fprintf(&b, "## CPU profiles (wrk -t1 -c%d, /debug/pprof/profile?seconds=%d during the load)\n\n", *profileConns, max(int(duration.Seconds())-1, 1))
	for _, t := range []target{ts.imagelb, ts.goref} {
		file := filepath.Join(profileDir, slugOf(t.name)+"-cpu.pprof")
		done := make(chan error, 1)
		go func() { _, err := wrk(t.url, *profileConns, 0, *duration, ""); done <- err }()
		time.Sleep(500 * time.Millisecond) // let the load ramp up
		err := fetch(fmt.Sprintf("%s/profile?seconds=%d", t.pprof, max(int(duration.Seconds())-1, 1)), file)
		if werr := <-done; err == nil {
			err = werr
		}
		if err != nil {
			return "", fmt.Errorf("%s: %v", t.name, err)
		}
		args := []string{"tool", "pprof", "-top", "-nodecount=25", t.binary, file}
		top, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, top)
		}
		full, _ := exec.Command("go", "tool", "pprof", "-top", "-nodecount=100000", t.binary, file).CombinedOutput()
		fmt.Fprintf(&b, "### %s\n\n`go %s`\n\n", t.name, strings.Join(shorten(args), " "))
		if t.name == nameImagelb {
			fmt.Fprintf(&b, "Flat CPU in imagelb's own package (github.com/imagelb/caddy-imagelb and below): %.1f%% of the samples.\n\n", flatShare(string(full), "github.com/imagelb/caddy-imagelb"))
		}
		fmt.Fprintf(&b, "Garbage collection and allocation (flat, runtime.gc*/scan*/mark*/malloc*/(*mspan)/(*mheap)): %.1f%%; syscalls (flat): %.1f%%.\n\n```\n%s```\n\n",
			flatShare(string(full), gcFuncs), flatShare(string(full), "Syscall6"), top)
	}
	return b.String(), nil
}

// gcFuncs matches the runtime's collector and allocator in a pprof line.
const gcFuncs = `re:runtime\.(gc|scan|mark|malloc|nextFree|\(\*mspan\)|\(\*mheap\)|\(\*mcache\)|sweepone|bgsweep|wbBuf|findObject|greyobject|tryDeferToSpanScan)|gc/scan`

func fetch(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, msg)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

var totalLine = regexp.MustCompile(`of ([\d.]+)([kMGT]?B)? total`)

// pprofTotal reads the total of a pprof -top header ("... of 1086.97MB
// total"), in objects or bytes.
func pprofTotal(top string) (float64, error) {
	m := totalLine.FindStringSubmatch(top)
	if m == nil {
		return 0, fmt.Errorf("no total in pprof's output:\n%s", top)
	}
	return quantity(m[1], m[2]), nil
}

func quantity(v, unit string) float64 {
	f, _ := strconv.ParseFloat(v, 64)
	return f * map[string]float64{"": 1, "B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[unit]
}

var topLine = regexp.MustCompile(`^\s*(-?[\d.]+)([kMGT]?B)?\s+-?[\d.]+%`)

// perRequestTop adds, in front of each entry of a pprof -top, its flat
// value per request.
func perRequestTop(top string, requests int) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(top, "\n") {
		switch m := topLine.FindStringSubmatch(line); {
		case m != nil && requests > 0:
			fmt.Fprintf(&b, "%10.2f  %s", quantity(m[1], m[2])/float64(requests), line)
		case strings.Contains(line, "flat  flat%"):
			fmt.Fprintf(&b, "%10s  %s", "flat/req", line)
		default:
			b.WriteString(line)
		}
	}
	return b.String()
}

// flatShare sums the flat% of the entries of a pprof -top whose function
// matches pattern (a substring, or a regexp after "re:").
func flatShare(top, pattern string) float64 {
	match := func(s string) bool { return strings.Contains(s, pattern) }
	if re, ok := strings.CutPrefix(pattern, "re:"); ok {
		match = regexp.MustCompile(re).MatchString
	}
	share := 0.0
	for _, line := range strings.Split(top, "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasSuffix(f[1], "%") || !match(strings.Join(f[5:], " ")) {
			continue
		}
		v, _ := strconv.ParseFloat(strings.TrimSuffix(f[1], "%"), 64)
		share += v
	}
	return share
}

// shorten writes the temp paths of a pprof command as their base names.
func shorten(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if filepath.IsAbs(a) {
			a = filepath.Base(a)
		}
		out[i] = a
	}
	return out
}

func slugOf(name string) string {
	return strings.Trim(regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(strings.ToLower(name), "-"), "-")
}
