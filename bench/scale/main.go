// Command scale measures what an operator's surfaces and the registry's
// memory cost as the registry grows: for each size, a fresh process of the
// real binary (./cmd/caddy) on loopback ports it picks, images of two
// containers registered through the admin API, then
//
//   - the RSS per registered container, idle and after traffic through the
//     proxy to real backends on 127.0.0.1 (every image's two containers
//     served once);
//   - the admin /metrics: bytes, series, seconds, and the RSS growth of a
//     scrape;
//   - a /api/v1/stats?limit=100 page ("n/a" where the server answers 422 or
//     ignores limit) and the full /api/v1/stats: bytes, seconds, and the RSS
//     growth of the full read;
//   - the admin /imagelb/metrics, streamed (streamed.go), and whatever
//     other probes add.
//
// It prints markdown tables and writes them, with the command and the
// machine, to bench/results/scale.md:
//
//	go run ./bench/scale -sizes 1000,10000,100000
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	host "github.com/imagelb/caddy-imagelb/bench/internal/machine"
)

var (
	sizes     = flag.String("sizes", "1000,10000,100000", "registry sizes (images of two containers each), comma-separated")
	out       = flag.String("out", "bench/results/scale.md", "the report file (\"\": print only)")
	binary    = flag.String("binary", "", "a built Caddy with the plugin (default: go build ./cmd/caddy)")
	store     = flag.String("store", "local", "the imagelb store: local (the default: every registration on disk) or memory")
	extra     = flag.String("imagelb", "", "more lines for the imagelb block of the Caddyfile (metrics options, for example); \\n separates lines")
	writers   = flag.Int("writers", 16, "concurrent registrations")
	clients   = flag.Int("clients", 32, "concurrent clients of the traffic")
	share     = flag.Float64("traffic", 1, "share of the images that get traffic (each of their containers one request)")
	settle    = flag.Duration("settle", 30*time.Second, "the longest wait for the RSS to settle after registering or traffic")
	profiles  = flag.String("profiles", "", "a directory for each size's heap profile (idle and after traffic), for go tool pprof")
	keepGoing = flag.Bool("keep-going", false, "go on to the next size after a failed measurement (the cell reads \"failed\")")
)

func main() {
	flag.Parse()
	log.SetFlags(log.Ltime)
	ns, err := parseSizes(*sizes)
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "imagelb-scale-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := *binary
	if bin == "" {
		bin = filepath.Join(dir, "caddy")
		log.Printf("building ./cmd/caddy")
		build := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			log.Fatalf("building ./cmd/caddy (run from the module's root): %v", err)
		}
	}
	backends := startBackends(2)
	began := time.Now()
	var results []*result
	for _, n := range ns {
		log.Printf("%d images: starting a fresh process", n)
		res, err := measure(bin, filepath.Join(dir, strconv.Itoa(n)), backends, n)
		if err != nil {
			if !*keepGoing {
				log.Fatalf("%d images: %v", n, err)
			}
			log.Printf("%d images: %v", n, err)
		}
		results = append(results, res)
	}
	report := header(time.Since(began)) + tables(results)
	fmt.Print(report)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
			log.Fatal(err)
		}
		log.Printf("wrote %s", *out)
	}
}

func parseSizes(s string) ([]int, error) {
	var ns []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-sizes: %q is not a positive number", f)
		}
		ns = append(ns, n)
	}
	return ns, nil
}

// header is what the report says above its tables: the command, the
// machine, the build, the options.
func header(took time.Duration) string {
	var b strings.Builder
	b.WriteString("# Scale: memory and the operator's surfaces\n\n")
	fmt.Fprintf(&b, "- Command: `go run ./bench/scale %s`\n", strings.Join(os.Args[1:], " "))
	mem := "unknown"
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(data)); len(f) > 1 {
			kb, _ := strconv.ParseFloat(f[1], 64)
			mem = fmt.Sprintf("%.0f GiB RAM", kb/1024/1024)
		}
	}
	fmt.Fprintf(&b, "- Machine: %d cores (nproc), %s, %s; shared and noisy; loopback only; load average before the run %s\n",
		runtime.NumCPU(), host.CPUModel(), mem, loadAverage())
	fmt.Fprintf(&b, "- Go: %s; the binary: `go build ./cmd/caddy` (Caddy's standard modules and this plugin)\n", runtime.Version())
	fmt.Fprintf(&b, "- Built from: commit %s\n", commit())
	fmt.Fprintf(&b, "- Date: %s; run time %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), took.Round(time.Second))
	opts := "`store " + *store + "`, `health_interval 1h`"
	if *extra != "" {
		opts += ", `" + strings.ReplaceAll(*extra, `\n`, "; ") + "`"
	}
	fmt.Fprintf(&b, "- imagelb options: %s, everything else default\n\n", opts)
	b.WriteString(method)
	return b.String()
}

const method = `Each size runs in a fresh process. Images of two containers (both on one of two tiny Go backends on
127.0.0.1, status healthy) are registered through the admin endpoint, several at a time
(` + "`POST /imagelb/services/{id}/register`" + `); then the process's RSS (VmRSS of /proc, anonymous and file pages) is
read once it has settled (no change over 5 s, or the -settle limit), as is the Go heap in use (` + "`/debug/vars`" + `).
"Per container" is the growth over the process before any registration, divided by the containers. Traffic
goes through the proxy (` + "`/api/v1/proxy/{id}/`" + `): each image gets two requests, one per container by round
robin. The RSS growth of a read is the peak RSS during it (VmHWM, reset through /proc/PID/clear_refs before
it) over the RSS just before. Series are the lines of the exposition that are not comments.

`

func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); len(strings.TrimSpace(string(st))) > 0 {
		c += "+dirty"
	}
	return c
}
