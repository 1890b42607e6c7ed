// Package scrape measures one Prometheus scrape: the bytes and series of the
// text exposition, how long it took, and how much the RSS of the process
// that answered grew while it did. The metrics benchmark uses it in process
// (Handler), the scale commands under bench/ against a running binary (URL).
package scrape

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// Result is one scrape.
type Result struct {
	Bytes   int64         // of the body, uncompressed
	Series  int64         // sample lines: neither comments nor blank
	Elapsed time.Duration // from the request to the body's last byte
	// RSSGrowth is the peak resident set during the scrape minus the
	// resident set before it, in bytes (-1: unknown, not Linux).
	RSSGrowth int64
}

// String is the result as a table row: bytes, series, seconds, RSS growth.
func (r Result) String() string {
	return fmt.Sprintf("%.1f MB, %d series, %.2f s, RSS +%.0f MB",
		float64(r.Bytes)/1e6, r.Series, r.Elapsed.Seconds(), float64(r.RSSGrowth)/1e6)
}

// counter counts the bytes and sample lines written to it, keeping nothing.
type counter struct {
	bytes, series int64
	atLineStart   bool
	comment       bool
	blank         bool
}

func (c *counter) Write(p []byte) (int, error) {
	n := len(p)
	c.bytes += int64(n)
	for len(p) > 0 {
		if c.atLineStart {
			c.atLineStart, c.comment, c.blank = false, p[0] == '#', p[0] == '\n'
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			break // the rest of a line
		}
		if !c.comment && !c.blank {
			c.series++
		}
		c.atLineStart = true
		p = p[i+1:]
	}
	return n, nil
}

// discard is a ResponseWriter that only counts.
type discard struct {
	counter
	h      http.Header
	status int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) WriteHeader(status int)      { d.status = status }
func (d *discard) Write(p []byte) (int, error) { return d.counter.Write(p) }

// Handler scrapes h in this process (plain text, no compression), measuring
// this process's RSS growth. It collects garbage first, so the growth is
// what the scrape allocated.
func Handler(h http.Handler) (Result, error) {
	req, err := http.NewRequest("GET", "/metrics", nil)
	if err != nil {
		return Result{}, err
	}
	req.Header.Set("Accept", "text/plain")
	w := &discard{h: http.Header{}, status: 200, counter: counter{atLineStart: true}}
	runtime.GC()
	debug.FreeOSMemory()
	before, peak := startPeak(os.Getpid())
	start := time.Now()
	h.ServeHTTP(w, req)
	res := Result{Bytes: w.bytes, Series: w.series, Elapsed: time.Since(start), RSSGrowth: peak() - before}
	if before < 0 {
		res.RSSGrowth = -1
	}
	if w.status != http.StatusOK {
		return res, fmt.Errorf("status %d", w.status)
	}
	return res, nil
}

// URL scrapes url (plain text, no compression); pid, when positive, is the
// process whose RSS growth to measure (it must be this user's).
func URL(client *http.Client, url string, pid int) (Result, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return Result{}, err
	}
	req.Header.Set("Accept", "text/plain")
	req.Header.Set("Accept-Encoding", "identity")
	before, peak := int64(-1), func() int64 { return -1 }
	if pid > 0 {
		before, peak = startPeak(pid)
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return Result{}, err
	}
	defer resp.Body.Close()
	c := &counter{atLineStart: true}
	if _, err := io.Copy(c, resp.Body); err != nil {
		return Result{}, err
	}
	res := Result{Bytes: c.bytes, Series: c.series, Elapsed: time.Since(start), RSSGrowth: peak() - before}
	if before < 0 {
		res.RSSGrowth = -1
	}
	if resp.StatusCode != http.StatusOK {
		return res, fmt.Errorf("%s: status %d", url, resp.StatusCode)
	}
	return res, nil
}

// startPeak resets the process's peak RSS (Linux: 5 to clear_refs) and
// returns its RSS now and a function returning its peak since: both -1 when
// /proc cannot tell.
func startPeak(pid int) (int64, func() int64) {
	dir := "/proc/" + strconv.Itoa(pid)
	unknown := func() int64 { return -1 }
	if err := os.WriteFile(dir+"/clear_refs", []byte("5"), 0); err != nil {
		return -1, unknown
	}
	rss := status(dir, "VmRSS:")
	if rss < 0 {
		return -1, unknown
	}
	return rss, func() int64 { return status(dir, "VmHWM:") }
}

// status reads one "Name: N kB" line of /proc/PID/status, in bytes.
func status(dir, field string) int64 {
	f, err := os.Open(dir + "/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return -1
			}
			return kb * 1024
		}
	}
	return -1
}
