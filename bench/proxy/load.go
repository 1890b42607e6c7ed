package main

import (
	"bufio"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// sample is what one run of one cell measured.
type sample struct {
	rps, p50, p99 float64 // requests/s, latency ms
	cpuPer10k     float64 // CPU seconds of the proxy process per 10k requests
	requests      int
	errors        int // client-visible: socket errors, timeouts, non-2xx
	wsOpened      int // upgraded connections opened before the run
	wsAlive       int // and still echoing after it
	changes       int // churn: changes made (each an add or a remove)
	changeFails   int // churn: changes the proxy refused or failed
	seconds       float64
}

var (
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkLatency = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)`)
	wrkTotal   = regexp.MustCompile(`(\d+) requests in ([\d.]+)(us|ms|s|m)`)
	wrkSocket  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// wrk runs HTTP/1.1 load (http:// or https://) on url with conns
// connections for -duration and counts the CPU of pid.
func wrk(url string, conns, pid int, dur time.Duration, script string) (sample, error) {
	args := []string{"-t1", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(dur.Seconds())), "--latency"}
	if script != "" {
		args = append(args, "-s", script)
	}
	args = append(args, url)
	cpu0 := cpuSeconds(pid)
	out, err := exec.Command("wrk", args...).CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("wrk %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	cpu := cpuSeconds(pid) - cpu0
	var s sample
	if m := wrkRPS.FindSubmatch(out); m != nil {
		s.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	for _, m := range wrkLatency.FindAllSubmatch(out, -1) {
		v := toMillis(string(m[2]), string(m[3]))
		if string(m[1]) == "50" {
			s.p50 = v
		} else {
			s.p99 = v
		}
	}
	if m := wrkTotal.FindSubmatch(out); m != nil {
		s.requests, _ = strconv.Atoi(string(m[1]))
		s.seconds = toMillis(string(m[2]), string(m[3])) / 1000
	}
	if m := wrkSocket.FindSubmatch(out); m != nil {
		for _, f := range m[1:] {
			n, _ := strconv.Atoi(string(f))
			s.errors += n
		}
	}
	if m := wrkNon2xx.FindSubmatch(out); m != nil {
		n, _ := strconv.Atoi(string(m[1]))
		s.errors += n
	}
	if s.errors > 0 && *verbose {
		log.Printf("  %s: %s", url, strings.Join(regexp.MustCompile(`(?m)^\s*(Socket errors|Non-2xx).*$`).FindAllString(string(out), -1), "; "))
	}
	if pid != 0 && s.requests > 0 {
		s.cpuPer10k = cpu / float64(s.requests) * 10000
	}
	return s, nil
}

func toMillis(v, unit string) float64 {
	f, _ := strconv.ParseFloat(v, 64)
	switch unit {
	case "us":
		return f / 1000
	case "s":
		return f * 1000
	case "m":
		return f * 60000
	}
	return f
}

var (
	h2Finished = regexp.MustCompile(`finished in ([\d.]+)s, ([\d.]+) req/s`)
	h2Requests = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
)

// h2load runs HTTP/2 load over TLS: conns clients, one stream each (so that
// conns requests are in flight, as with wrk), for -duration. Latencies
// come from its per-request log.
func h2load(url string, conns, pid int, dur time.Duration, dir string) (sample, error) {
	logFile := filepath.Join(dir, "h2load.log")
	os.Remove(logFile)
	args := []string{"-t1", fmt.Sprintf("-c%d", conns), "-m1", fmt.Sprintf("-D%d", int(dur.Seconds())), "--log-file=" + logFile, url}
	cpu0 := cpuSeconds(pid)
	out, err := exec.Command("h2load", args...).CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("h2load %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	cpu := cpuSeconds(pid) - cpu0
	var s sample
	if m := h2Finished.FindSubmatch(out); m != nil {
		s.seconds, _ = strconv.ParseFloat(string(m[1]), 64)
		s.rps, _ = strconv.ParseFloat(string(m[2]), 64)
	}
	// "failed" counts the errored requests and those answered with a
	// status other than 2xx; the status line counts responses whose
	// headers arrived, some still in flight at the end
	if m := h2Requests.FindSubmatch(out); m != nil {
		s.requests, _ = strconv.Atoi(string(m[3])) // done
		for _, f := range [][]byte{m[5], m[7]} {   // failed, timeout
			n, _ := strconv.Atoi(string(f))
			s.errors += n
		}
	} else {
		return s, fmt.Errorf("h2load %s: no summary in\n%s", url, out)
	}
	s.p50, s.p99 = logPercentiles(logFile)
	if pid != 0 && s.requests > 0 {
		s.cpuPer10k = cpu / float64(s.requests) * 10000
	}
	return s, nil
}

// logPercentiles reads h2load's per-request log (start µs, status, duration
// µs, tab-separated) and returns p50 and p99 in ms.
func logPercentiles(path string) (p50, p99 float64) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	var d []float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) < 3 {
			continue
		}
		if us, err := strconv.ParseFloat(fields[2], 64); err == nil {
			d = append(d, us/1000)
		}
	}
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	return d[len(d)/2], d[min(len(d)-1, len(d)*99/100)]
}

// stat is a median and the spread (min–max) of one figure over rounds.
type stat struct{ med, lo, hi float64 }

func statOf(v []float64) stat {
	if len(v) == 0 {
		return stat{}
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return stat{med: v[len(v)/2], lo: v[0], hi: v[len(v)-1]}
}

// over applies f to every round's sample.
func over(ss []sample, f func(sample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

// ratios are a's figure over b's, round by round (both ran in the same
// round, so each ratio compares runs minutes apart at most).
func ratios(a, b []sample, f func(sample) float64) []float64 {
	var out []float64
	for i := range min(len(a), len(b)) {
		if f(b[i]) != 0 {
			out = append(out, f(a[i])/f(b[i]))
		}
	}
	return out
}

func rps(s sample) float64 { return s.rps }
func p99(s sample) float64 { return s.p99 }
func p50(s sample) float64 { return s.p50 }

// cell formats a stat: "0.93 (0.90–0.97)"; a single round has no spread.
func (s stat) cell(format string) string {
	if s == (stat{}) {
		return "–"
	}
	if s.lo == s.hi {
		return fmt.Sprintf(format, s.med)
	}
	return fmt.Sprintf(format+" ("+format+"–"+format+")", s.med, s.lo, s.hi)
}

func sum(ss []sample, f func(sample) int) int {
	n := 0
	for _, s := range ss {
		n += f(s)
	}
	return n
}
