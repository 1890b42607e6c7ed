package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log"
	"strings"
	"time"
)

// result is what one size measured. A nil read or memory was not measured
// (a step failed before it).
type result struct {
	images, containers int
	registerSeconds    float64
	base, idle, busy   *memory // before registering, idle after it, after traffic
	heapBase, heapIdle int64   // the Go heap in use before registering, idle after it
	heapBusy           int64   // and after traffic
	requests           int
	metrics            *read
	series             int
	page               *read // nil with pageNA: the server has no paging
	pageNA             string
	stats              *read
	extra              map[string]string // the probes' columns
	failed             string
}

// A probe measures more figures of a size's process after the built-in
// ones (the dashboard's first paint and its bytes in 10 s, for example):
// its columns join the surfaces table, in the order of probes. A probe is
// added by a file of its own appending to probes in an init function.
type probe struct {
	columns []string
	measure func(n *node, images int) (cells []string, err error)
}

var probes []probe

// measure starts a fresh process, registers images of two containers and
// measures it; the process is stopped before it returns.
func measure(bin, dir string, backends []string, images int) (*result, error) {
	res := &result{images: images, containers: 2 * images, extra: map[string]string{}}
	n, err := startNode(bin, dir)
	if err != nil {
		res.failed = err.Error()
		return res, err
	}
	defer n.stop()
	fail := func(step string, err error) (*result, error) {
		res.failed = step
		return res, fmt.Errorf("%s: %v", step, err)
	}

	base := n.settled()
	res.base = &base
	if res.heapBase, err = n.heapInuse(); err != nil {
		return fail("reading the heap", err)
	}
	start := time.Now()
	if err := n.register(images, backends); err != nil {
		return fail("registering", err)
	}
	res.registerSeconds = time.Since(start).Seconds()
	log.Printf("%d images registered in %.1f s (%.0f/s)", images, res.registerSeconds, float64(images)/res.registerSeconds)
	idle := n.settled()
	res.idle = &idle
	if res.heapIdle, err = n.heapInuse(); err != nil {
		return fail("reading the heap", err)
	}
	n.saveProfile(fmt.Sprintf("heap-%d-idle", images))
	log.Printf("idle: RSS %.1f MiB, %.0f B per container", mib(idle.rss), perContainer(idle.rss, base.rss, res.containers))

	if res.requests, err = n.traffic(images); err != nil {
		return fail("traffic", err)
	}
	busy := n.settled()
	res.busy = &busy
	if res.heapBusy, err = n.heapInuse(); err != nil {
		return fail("reading the heap", err)
	}
	n.saveProfile(fmt.Sprintf("heap-%d-traffic", images))
	log.Printf("after %d requests: RSS %.1f MiB, %.0f B per container", res.requests, mib(busy.rss), perContainer(busy.rss, base.rss, res.containers))

	// The reads that should stay small go first: a scrape, today, grows the
	// heap by gigabytes, and the RSS the runtime keeps would hide the growth
	// of a read after it.
	p, err := n.get(n.site+"/api/v1/stats?limit=100", true)
	switch {
	case err != nil:
		return fail("/api/v1/stats?limit=100", err)
	case p.status == 422:
		res.pageNA = "n/a (422: no paging)"
	case p.status != 200:
		return fail("/api/v1/stats?limit=100", fmt.Errorf("status %d", p.status))
	case listed(p.body) > 100:
		res.pageNA = "n/a (limit ignored)"
	default:
		p.body = nil
		res.page = &p
	}
	s, err := n.get(n.site+"/api/v1/stats", false)
	if err != nil || s.status != 200 {
		return fail("/api/v1/stats", fmt.Errorf("%v (status %d)", err, s.status))
	}
	res.stats = &s
	log.Printf("/api/v1/stats: %.1f MB, %.2f s, RSS +%.0f MiB", float64(s.bytes)/1e6, s.seconds, mib(s.growth))

	m, err := n.get(n.admin+"/metrics", true)
	if err != nil || m.status != 200 {
		return fail("/metrics", fmt.Errorf("%v (status %d)", err, m.status))
	}
	res.series = series(m.body)
	m.body = nil
	res.metrics = &m
	log.Printf("/metrics: %.1f MB, %d series, %.2f s, RSS +%.0f MiB", float64(m.bytes)/1e6, res.series, m.seconds, mib(m.growth))

	for _, pr := range probes {
		cells, err := pr.measure(n, images)
		if err != nil {
			log.Printf("%s: %v", strings.Join(pr.columns, ", "), err)
			cells = nil
		}
		for i, col := range pr.columns {
			if i < len(cells) {
				res.extra[col] = cells[i]
			} else {
				res.extra[col] = "failed"
			}
		}
	}
	return res, nil
}

// series counts the samples of a Prometheus text exposition.
func series(body []byte) int {
	count := 0
	for line := range bytes.Lines(body) {
		if len(bytes.TrimSpace(line)) > 0 && line[0] != '#' {
			count++
		}
	}
	return count
}

// listed is the number of services in a /stats answer.
func listed(body []byte) int {
	var v struct {
		Services []json.RawMessage `json:"services"`
	}
	if json.Unmarshal(body, &v) != nil {
		return 0
	}
	return len(v.Services)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func perContainer(rss, base int64, containers int) float64 {
	return float64(rss-base) / float64(containers)
}

// tables renders the results: memory, then the surfaces.
func tables(results []*result) string {
	var b strings.Builder
	b.WriteString("## Memory per registered container\n\n")
	b.WriteString("| images | containers | registered in | RSS before | RSS idle (anon + file) | **idle, per container** | Go heap idle, per container | requests | RSS after traffic | **after traffic, per container** | Go heap after traffic, per container |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %d | %d | ", r.images, r.containers)
		if r.idle == nil {
			fmt.Fprintf(&b, "failed: %s |||||||||\n", r.failed)
			continue
		}
		fmt.Fprintf(&b, "%.1f s (%.0f/s) | %.1f MiB | %.1f MiB (%.1f + %.1f) | **%.0f B** | %.0f B | ",
			r.registerSeconds, float64(r.images)/r.registerSeconds, mib(r.base.rss), mib(r.idle.rss), mib(r.idle.anon), mib(r.idle.file),
			perContainer(r.idle.rss, r.base.rss, r.containers), perContainer(r.heapIdle, r.heapBase, r.containers))
		if r.busy == nil {
			fmt.Fprintf(&b, "failed: %s |||\n", r.failed)
			continue
		}
		fmt.Fprintf(&b, "%d | %.1f MiB | **%.0f B** | %.0f B |\n", r.requests, mib(r.busy.rss),
			perContainer(r.busy.rss, r.base.rss, r.containers), perContainer(r.heapBusy, r.heapBase, r.containers))
	}
	b.WriteString("\n## The operator's surfaces (after the traffic)\n\n")
	cols := []string{"images", "/metrics", "series", "scrape", "RSS growth of a scrape", "`/stats?limit=100`", "full `/stats`", "RSS growth of a full `/stats`"}
	for _, pr := range probes {
		cols = append(cols, pr.columns...)
	}
	b.WriteString("| " + strings.Join(cols, " | ") + " |\n|" + strings.Repeat("---|", len(cols)) + "\n")
	for _, r := range results {
		cells := []string{fmt.Sprint(r.images)}
		if r.metrics == nil {
			cells = append(cells, "failed: "+r.failed)
		} else {
			cells = append(cells, size(r.metrics.bytes), fmt.Sprint(r.series), fmt.Sprintf("%.2f s", r.metrics.seconds), fmt.Sprintf("%.0f MiB", mib(r.metrics.growth)))
			switch {
			case r.page != nil:
				cells = append(cells, fmt.Sprintf("%s in %.3f s", size(r.page.bytes), r.page.seconds))
			case r.pageNA != "":
				cells = append(cells, r.pageNA)
			default:
				cells = append(cells, "failed: "+r.failed)
			}
			if r.stats != nil {
				cells = append(cells, fmt.Sprintf("%s in %.2f s", size(r.stats.bytes), r.stats.seconds), fmt.Sprintf("%.0f MiB", mib(r.stats.growth)))
			}
			for _, pr := range probes {
				for _, col := range pr.columns {
					cells = append(cells, r.extra[col])
				}
			}
		}
		for len(cells) < len(cols) {
			cells = append(cells, "")
		}
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	return b.String()
}

// size writes a byte count in kB or MB (powers of 10, as a transfer).
func size(n int64) string {
	switch {
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}
