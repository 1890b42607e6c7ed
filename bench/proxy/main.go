// Command proxy compares, in one run on loopback, what a request costs
// through imagelb against the backend direct, stock Caddy reverse_proxy,
// nginx, HAProxy and a minimal Go reverse proxy (bench/goproxy), quiet and
// while the upstream set changes, over HTTP/1.1 and over TLS with HTTP/2
// (see docs/performance.md for the rules it follows: one run,
// alternating rounds in rotated order, medians of per-round ratios, spreads).
//
//	go run ./bench/proxy                                  # everything, about 20 minutes on 2 cores
//	go run ./bench/proxy -quick                           # 1 round of 2 s, 32 connections, N=10 only
//	go run ./bench/proxy -scenario churn -rounds 1 -duration 2s
//
// Scenarios (-scenario, comma-separated; default all of them):
//
//	quiet    HTTP/1.1 load (wrk) through every target at each -conns
//	churn    the same load at the first -conns while the third backend is
//	         added and removed N times a second (-churn), through each proxy's
//	         own way of changing its upstreams; long-lived upgraded connections
//	         opened before each run are checked after it. Runs in the same
//	         rotation as the quiet runs at that connection count, so that its
//	         ratios to stock Caddy quiet and the Go reference quiet are per round
//	tls      HTTPS with one self-signed certificate for 127.0.0.1: HTTP/2
//	         (h2load) and HTTP/1.1 (wrk): imagelb, stock Caddy, nginx
//	profile  allocations per request (imagelb, stock Caddy, the Go reference)
//	         and CPU profiles (imagelb, the Go reference), from /debug/pprof
//	scale    imagelb with 1 to 100,000 registered images
//
// It installs wrk, h2load, nginx and haproxy from Debian when they are
// missing (as root), builds Caddy with the plugin through xcaddy (-caddy
// reuses a binary), starts three backends, each proxy in its own process,
// and writes a markdown report to -out. Every process it starts is stopped
// when it ends.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	caddyVersion = "v2.11.9"
	module       = "github.com/imagelb/caddy-imagelb"
)

var (
	scenarios  = flag.String("scenario", "churn,quiet,tls,profile,scale", "comma-separated scenarios to run: churn, quiet, tls, profile, scale")
	quick      = flag.Bool("quick", false, "a development run: 1 round of 2s, 32 connections, churn at 10/s, small scale")
	conns      = flag.String("conns", "32,256", "connection counts of the quiet comparison; churn runs at the first")
	churnRates = flag.String("churn", "1,10,50", "upstream changes per second in the churn scenario")
	tlsConns   = flag.String("tls-conns", "32,256", "client connections of the HTTP/2 comparison")
	tlsH1Conns = flag.String("tls-h1-conns", "32", "connections of the HTTP/1.1-over-TLS comparison (empty: none)")
	wsConns    = flag.Int("ws", 16, "long-lived upgraded connections opened through a proxy before each run and checked after it")
	rounds     = flag.Int("rounds", 5, "alternating rounds per comparison")
	duration   = flag.Duration("duration", 5*time.Second, "load duration per run (whole seconds)")
	scaleSizes = flag.String("scale", "1,100,10000,100000", "registered images of the scale table")
	caddyBin   = flag.String("caddy", "", "a Caddy binary with the plugin to use instead of building one with xcaddy")
	out        = flag.String("out", "bench/results/proxy.md", "where the markdown report goes")
	verbose    = flag.Bool("v", false, "log wrk's error lines")
	backend    = flag.String("backend", "", "internal: serve as a backend on this address")
)

func main() {
	flag.Parse()
	if *backend != "" {
		serveBackend(*backend)
		return
	}
	log.SetFlags(log.Ltime)
	if *quick {
		*rounds, *duration = 1, 2*time.Second
		*conns, *churnRates, *tlsConns, *tlsH1Conns, *scaleSizes = "32", "10", "32", "32", "1,10000"
	}
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("bench/proxy runs on Linux (it reads /proc)")
	}
	want := map[string]bool{}
	for _, s := range splitList(*scenarios) {
		switch s {
		case "churn", "quiet", "tls", "profile", "scale":
			want[s] = true
		default:
			return fmt.Errorf("-scenario %q: want churn, quiet, tls, profile or scale", s)
		}
	}
	connCounts, err := ints("-conns", *conns)
	if err != nil {
		return err
	}
	rates, err := ints("-churn", *churnRates)
	if err != nil {
		return err
	}
	if err := ensureTools(map[string]string{"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx", "haproxy": "haproxy"}); err != nil {
		return err
	}
	loadBefore, at := loadAverage(), commit()
	started := time.Now()

	dir, err := os.MkdirTemp("", "imagelb-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	e := &env{dir: dir}
	defer e.stopAll()
	stopOnSignal(e)
	if err := e.build(); err != nil {
		return err
	}
	if err := e.writeCert(); err != nil {
		return err
	}
	if err := e.startBackends(3); err != nil {
		return err
	}
	ts, err := e.startTargets()
	if err != nil {
		return fmt.Errorf("%v (logs in %s)", err, filepath.Join(dir, "logs"))
	}

	var body strings.Builder
	var churnSection string
	if want["churn"] || want["quiet"] {
		for i, c := range connCounts {
			doChurn := want["churn"] && i == 0
			if !want["quiet"] && !doChurn {
				continue
			}
			res, err := e.quietAndChurn(ts, c, doChurn, rates)
			if err != nil {
				return err
			}
			if doChurn {
				churnSection = churnTable(ts, c, rates, res)
			}
			if want["quiet"] {
				body.WriteString(quietTable(ts, c, res))
			}
		}
	}
	if want["tls"] {
		s, err := e.httpsComparison(ts)
		if err != nil {
			return err
		}
		body.WriteString(s)
	}
	if want["profile"] {
		s, err := e.profiles(ts)
		if err != nil {
			return err
		}
		body.WriteString(s)
	}
	if want["scale"] {
		s, err := e.scale(ts.imagelb)
		if err != nil {
			return err
		}
		body.WriteString(s)
	}

	var report strings.Builder
	report.WriteString("# Proxy benchmark\n\n")
	fmt.Fprintf(&report, "Command: `go run ./bench/proxy%s` (from the repository root), at commit %s; it ran %s.\n\n",
		argsLine(), at, time.Since(started).Round(time.Second))
	fmt.Fprintf(&report, "%s Load average before the run: %s (the machine is shared: read the figures as ratios within this run).\n\n", machine(), loadBefore)
	report.WriteString(readingNotes)
	report.WriteString(churnSection)
	report.WriteString(body.String())
	fmt.Print(report.String())
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(*out, []byte(report.String()), 0o644)
}

const readingNotes = `How to read it: every figure is the median of the rounds, with the spread (min–max) in brackets; a
ratio is computed round by round against the reference run of the same round, then its median taken. The
targets ran in one rotation per round, the order shifted each round. Each proxy is its own process on the
same three tiny Go backends (the first two serve; churn adds and removes the third). The load generator
and the proxies share the machine's two cores, so the proxies' absolute rates are lower than on a
dedicated machine, and the backend direct shows what one hop cannot beat. "errors" are client-visible:
wrk's socket errors (connect, read, write, timeout) plus non-2xx answers, summed over the rounds.

`

// cell is one run of the rotation.
type cell struct {
	key string
	run func() (sample, error)
}

// runRounds runs every cell once a round for -rounds rounds, the order
// shifted by a fraction of the cells each round so that no cell always
// follows the same neighbour, and returns each cell's samples by round.
func runRounds(phase string, cells []cell) (map[string][]sample, error) {
	out := make(map[string][]sample)
	for r := 0; r < *rounds; r++ {
		off := r * len(cells) / *rounds
		order := append(slices.Clone(cells[off:]), cells[:off]...)
		for _, c := range order {
			s, err := c.run()
			if err != nil {
				return nil, fmt.Errorf("%s, %s: %v", phase, c.key, err)
			}
			extra := ""
			if s.wsOpened > 0 {
				extra += fmt.Sprintf(" ws %d/%d", s.wsAlive, s.wsOpened)
			}
			if s.changes > 0 {
				extra += fmt.Sprintf(" changes %d (%d failed)", s.changes, s.changeFails)
			}
			log.Printf("%s round %d/%d %-46s %7.0f req/s p50 %6.2f p99 %7.2f ms errors %d%s", phase, r+1, *rounds, c.key, s.rps, s.p50, s.p99, s.errors, extra)
			out[c.key] = append(out[c.key], s)
			time.Sleep(300 * time.Millisecond) // let closed connections and old workers go
		}
	}
	return out, nil
}

func argsLine() string {
	var b strings.Builder
	for _, a := range os.Args[1:] {
		b.WriteString(" " + a)
	}
	return b.String()
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func ints(flagName, s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s %q: want positive integers separated by commas", flagName, s)
		}
		out = append(out, n)
	}
	return out, nil
}

// stopOnSignal stops every process and removes the temp dir on ^C.
func stopOnSignal(e *env) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ch
		log.Printf("interrupted: stopping everything")
		e.stopAll()
		os.RemoveAll(e.dir)
		os.Exit(1)
	}()
}
