// The markdown report: the tables of registrations and propagation, and
// the header naming the machine, the commit and the command.

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/imagelb/caddy-imagelb/bench/internal/machine"
)

func (b *bench) report(sizes []int, withBefore bool, res *regResults, prop *propResult) string {
	var w strings.Builder
	w.WriteString("# Control-plane benchmark\n\n")
	w.WriteString(header(b.source))
	fmt.Fprintf(&w, "- Run time: %s\n", time.Since(b.start).Round(time.Second))
	fmt.Fprintf(&w, "\nEach cell (a registry size and a store) has a Caddy node of its own, and each etcd cell its own cluster; every cell "+
		"takes part in every round, so the sizes alternate as well as the stores. "+
		"In a cell %d writers (one keep-alive HTTP connection each) re-register random images of the registry with "+
		"changed container ports for %s after a 0.5 s warm-up (`POST /imagelb/services/{id}/register`, two containers on 127.0.0.1, "+
		"nothing listening, `health_interval 1h`); a 200 means the change is committed. %d alternating round(s), the order of the "+
		"cells rotated each round (by the number of cells over the number of rounds). registrations/s: median of the rounds, spread min–max; latency: p50 and p99 of every "+
		"registration of the cell's rounds together; CPU: Caddy's user+system time per registration (from /proc). etcd runs "+
		"embedded in the benchmark process, fsync on (etcd's defaults otherwise), each member in its own temp dir on the same disk. "+
		"The machine is shared: before each cell the run waits, up to %s, until other processes use under %.2f cores (-quiet, "+
		"-quiet-wait), and the \"other load\" column says what they used during the cell.\n\n",
		*writers, *duration, *rounds, *quietWait, *quietMax)

	// before/after summary
	w.WriteString("## Registrations/s, before and after\n\n")
	hdr := "| images |"
	sep := "|---|"
	if withBefore {
		hdr += " before: JSON file |"
		sep += "---|"
	}
	hdr += " local (bbolt) |"
	sep += "---|"
	if withBefore {
		hdr += " local vs before |"
		sep += "---|"
	}
	hdr += " etcd, 1 member | etcd, 3 members |\n"
	sep += "---|---|\n"
	w.WriteString(hdr + sep)
	for _, size := range sizes {
		fmt.Fprintf(&w, "| %s |", thousands(size))
		get := func(store string) *cell { return res.cells[key(store, size)] }
		if withBefore {
			if c := get(nameBefore); c != nil {
				fmt.Fprintf(&w, " %s |", rateCell(c))
			} else {
				w.WriteString(" not measured |")
			}
		}
		fmt.Fprintf(&w, " %s |", rateCell(get(nameLocal)))
		if withBefore {
			if c, l := get(nameBefore), get(nameLocal); c != nil && l != nil {
				fmt.Fprintf(&w, " %.1f× |", l.median()/c.median())
			} else {
				w.WriteString(" – |")
			}
		}
		fmt.Fprintf(&w, " %s | %s |\n", rateCell(get(nameEtcd1)), rateCell(get(nameEtcd3)))
	}
	if withBefore && sizes[len(sizes)-1] > beforeMax {
		fmt.Fprintf(&w, "\nThe previous design is measured up to %s images only: each of its commits rewrites and fsyncs the whole "+
			"file, so a fill and rounds at 100,000 images would take too long.\n", thousands(beforeMax))
	}
	w.WriteString("\nCells: median registrations/s (min–max over the rounds).\n")

	// details
	w.WriteString("\n## Every cell\n\n| images | store | registrations/s | spread (min–max) | p50 ms | p99 ms | Caddy CPU µs / registration | bench process CPU µs / registration | other load, cores | errors |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, size := range sizes {
		for _, store := range res.stores {
			c := res.cells[key(store, size)]
			if c == nil {
				continue
			}
			r := c.rates()
			lat := c.latencies()
			cpu, self := c.cpuPerReg()
			nerr, first := c.errors()
			errCell := "0"
			if nerr > 0 {
				errCell = fmt.Sprintf("%d (%s)", nerr, strings.ReplaceAll(first, "|", "/"))
			}
			var others []float64
			for _, x := range c.samples {
				others = append(others, x.other)
			}
			slices.Sort(others)
			fmt.Fprintf(&w, "| %s | %s | %.0f | %.0f–%.0f | %.2f | %.2f | %.0f | %.0f | %.2f (%.2f–%.2f) | %s |\n", thousands(size), store, c.median(), r[0], r[len(r)-1],
				ms(pct(lat, .5)), ms(pct(lat, .99)), cpu*1e6, self*1e6, median(others), others[0], others[len(others)-1], errCell)
		}
	}
	w.WriteString("\nThe bench process's CPU is the clients plus every embedded etcd member (those of the cell's cluster do the work). " +
		"Other load: the cores used during the window by processes this run did not start, median (min–max) over the rounds: what " +
		"else ran on this shared machine meanwhile. It is the lower of two over-estimates: those processes' CPU from /proc (with the " +
		"children they reaped, which may have run before the window) and the machine's busy time (/proc/stat) less this run's " +
		"processes (which includes kernel work, this run's fsyncs among it).\n")

	// fills
	w.WriteString("\n## Filling the registries\n\n| images | store | how | images written | took | per second | node start: registry loaded | node idle after |\n|---|---|---|---|---|---|---|---|\n")
	for _, size := range sizes {
		for _, store := range res.stores {
			c := res.cells[key(store, size)]
			if c == nil {
				continue
			}
			f := c.fill
			load := f.load.Round(10 * time.Millisecond).String()
			settle := f.settle.Round(10 * time.Millisecond).String()
			if !f.settled {
				settle += " (not idle: gave up)"
			}
			fmt.Fprintf(&w, "| %s | %s | %s | %s | %s | %.0f | %s | %s |\n", thousands(size), store, f.how, thousands(f.images),
				f.took.Round(time.Millisecond), float64(f.images)/f.took.Seconds(), load, settle)
		}
	}
	w.WriteString("\nEvery cell has a node (and an etcd cluster) of its own. store local is filled through the admin API from empty " +
		"(the path being measured), then restarted like the others. The etcd registries and the JSON file are written directly, " +
		"in the record format the node writes (a record registered through the API and read back from etcd is the template), " +
		"then the node is started and loads them: faster than the API. The nodes are started one after the other (\"registry " +
		"loaded\": from the start of the process to the last image answering), then the run waits until every one is idle " +
		"(\"idle after\", from its start: under 15% of a core for 2 s; the first round of health checks after a start probes " +
		"every container) before the first round.\n")

	// targets
	w.WriteString("\n## Targets\n\n")
	l1, l100 := res.cells[key(nameLocal, 1000)], res.cells[key(nameLocal, 100000)]
	if l1 != nil && l100 != nil {
		ratio := l100.median() / l1.median()
		fmt.Fprintf(&w, "- %s store local at 100,000 images ≥ 0.8× its rate at 1,000: %.0f vs %.0f reg/s = %.2f×\n", mark(ratio >= 0.8), l100.median(), l1.median(), ratio)
	} else {
		w.WriteString("- – store local at 100,000 images ≥ 0.8× its rate at 1,000: not measured (needs -sizes with 1000 and 100000)\n")
	}
	if l100 != nil {
		fmt.Fprintf(&w, "- %s store local at 100,000 images ≥ 1,000 reg/s: %.0f reg/s\n", mark(l100.median() >= 1000), l100.median())
	} else {
		w.WriteString("- – store local at 100,000 images ≥ 1,000 reg/s: not measured\n")
	}
	if prop != nil {
		p99 := pct(prop.afterAck, .99)
		fmt.Fprintf(&w, "- %s propagation p99 < 100 ms: %.2f ms\n", mark(p99 < 100*time.Millisecond && prop.timeouts == 0), ms(p99))
	} else {
		w.WriteString("- – propagation p99 < 100 ms: not measured (-prop-samples 0)\n")
	}

	// propagation
	if prop != nil {
		b.propReport(&w, prop)
	}
	if len(res.profiles) > 0 {
		fmt.Fprintf(&w, "\n## Where Caddy's time goes at %s images\n\nCPU profiles from the admin endpoint (`/debug/pprof/profile?seconds=5`) while the writers load the node; the profile files are not kept.\n\n", thousands(sizes[len(sizes)-1]))
		for _, p := range res.profiles {
			w.WriteString(p)
		}
	}
	return w.String()
}

func (b *bench) propReport(w *strings.Builder, prop *propResult) {
	fmt.Fprintf(w, "\n## Propagation between nodes\n\n3 etcd members, 2 Caddy nodes (node_id a and b, each with all three endpoints). "+
		"Each sample registers a new image on node A, then polls node B's `GET /imagelb/services/{id}` (one keep-alive connection, "+
		"1 ms between polls) until it answers 200. %d samples after 10 warm-up ones; the registry grows from 10 to %d images, on a "+
		"fresh cluster started once the registration cells are done and their processes stopped.\n\n", len(prop.afterAck), len(prop.afterAck)+10)
	w.WriteString("| from | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n")
	row := func(name string, d []time.Duration) {
		fmt.Fprintf(w, "| %s | %.2f | %.2f | %.2f |\n", name, ms(pct(d, .5)), ms(pct(d, .99)), ms(d[len(d)-1]))
	}
	row("A's 200 (committed) → B answers 200", prop.afterAck)
	row("A's request sent → B answers 200", prop.afterSend)
	row("the registration on A itself", prop.regA)
	if prop.timeouts > 0 {
		fmt.Fprintf(w, "\n%d samples did not show on B within 10 s.\n", prop.timeouts)
	}

}

func rateCell(c *cell) string {
	if c == nil || len(c.samples) == 0 {
		return "–"
	}
	r := c.rates()
	if len(r) == 1 {
		return fmt.Sprintf("%.0f", r[0])
	}
	return fmt.Sprintf("%.0f (%.0f–%.0f)", c.median(), r[0], r[len(r)-1])
}

func mark(ok bool) string {
	if ok {
		return "✓"
	}
	return "✗"
}

// gitState names the commit of the working tree and whether it has
// uncommitted changes to tracked files.
func gitState() string {
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	dirty, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output()
	tree := "clean"
	if len(bytes.TrimSpace(dirty)) > 0 {
		tree = "with uncommitted changes to tracked files"
	}
	return fmt.Sprintf("the working tree at commit %s (%s)", strings.TrimSpace(string(commit)), tree)
}

func header(source string) string {
	cpu := machine.CPUModel()
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(data)); len(f) > 1 {
			kb, _ := strconv.Atoi(f[1])
			mem = fmt.Sprintf(", %.0f GiB RAM", float64(kb)/(1<<20))
		}
	}
	cmd := "go run ./bench/controlplane"
	if len(os.Args) > 1 {
		cmd += " " + strings.Join(os.Args[1:], " ")
	}
	return fmt.Sprintf("- Machine: %d cores (nproc), %s%s; shared and noisy; loopback only; temp dirs on %s\n"+
		"- Go: %s; Caddy: %s built with xcaddy (`go tool xcaddy build %s --with %s@v0.0.0=ROOT`)\n"+
		"- Built from: %s\n"+
		"- Date: %s\n"+
		"- Command: `%s`\n",
		runtime.NumCPU(), cpu, mem, tmpFS(), runtime.Version(), caddyVersion, caddyVersion, module,
		source, time.Now().UTC().Format("2006-01-02 15:04 UTC"), cmd)
}

// slug is s in lower-case letters, digits and dashes.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimSuffix(b.String(), "-")
}

func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// ---------------------------------------------------------------- helpers

func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
