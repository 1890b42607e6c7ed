package main

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"
)

func quietKey(t target, conns int) string { return fmt.Sprintf("quiet http c%d %s", conns, t.name) }
func churnKey(t target, conns, n int) string {
	return fmt.Sprintf("churn %d/s c%d %s", n, conns, t.name)
}

// quietAndChurn runs, in one rotation, the quiet runs of every target at
// conns and, when churn is set, the churn runs of every proxy that can
// change its upstreams at each rate.
func (e *env) quietAndChurn(ts *targets, conns int, churn bool, rates []int) (map[string][]sample, error) {
	var cells []cell
	for _, t := range ts.quiet() {
		cells = append(cells, cell{key: quietKey(t, conns), run: func() (sample, error) { return runWithUpgraded(t, conns, nil, 0) }})
	}
	if churn {
		for _, n := range rates {
			for _, t := range ts.churning() {
				cells = append(cells, cell{key: churnKey(t, conns, n), run: func() (sample, error) { return runWithUpgraded(t, conns, t.change, n) }})
			}
		}
	}
	phase := fmt.Sprintf("quiet c%d", conns)
	if churn {
		phase = fmt.Sprintf("quiet+churn c%d", conns)
	}
	return runRounds(phase, cells)
}

// runWithUpgraded opens -ws upgraded connections through t, runs the load
// while change (if any) is called rate times a second, then checks which
// upgraded connections still echo.
func runWithUpgraded(t target, conns int, change func(bool) error, rate int) (sample, error) {
	var ups []*upgraded
	if t.wsAddr != "" {
		for i := 0; i < *wsConns; i++ {
			u, err := openUpgraded(t.wsAddr, t.wsPath)
			if err != nil {
				log.Printf("  %s: upgraded connection %d: %v", t.name, i, err)
				continue
			}
			ups = append(ups, u)
		}
	}
	defer func() {
		for _, u := range ups {
			u.conn.Close()
		}
	}()

	var d *driver
	if change != nil {
		d = startDriver(t.name, change, rate)
	}
	s, err := wrk(t.url, conns, t.pid, *duration, "")
	if d != nil {
		s.changes, s.changeFails = d.stop()
	}
	if err != nil {
		return s, err
	}
	s.wsOpened = len(ups)
	for _, u := range ups {
		if u.alive() {
			s.wsAlive++
		}
	}
	return s, nil
}

// driver makes the changes of one churn run: add, remove, add, ... at a
// fixed rate (a change that takes longer than its interval delays the
// next: the achieved rate is reported), and leaves the set as it found it.
type driver struct {
	cancel func()
	done   chan struct{}

	changes, fails int
}

func startDriver(name string, change func(bool) error, rate int) *driver {
	ctx, cancel := context.WithCancel(context.Background())
	d := &driver{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		add := true // the set starts without the third backend
		var firstErr error
		for {
			select {
			case <-ctx.Done():
				// restore the set: remove the third backend if it is in
				for i := 0; !add && i < 20; i++ {
					if err := change(false); err == nil {
						add = true
					} else {
						time.Sleep(100 * time.Millisecond)
					}
				}
				if !add {
					log.Printf("  %s: could not remove the third backend after the run", name)
				}
				if firstErr != nil {
					log.Printf("  %s: %d of %d changes failed, the first: %v", name, d.fails, d.changes, firstErr)
				}
				return
			case <-tick.C:
				d.changes++
				if err := change(add); err != nil {
					d.fails++
					if firstErr == nil {
						firstErr = err
					}
					continue // try the same change at the next tick
				}
				add = !add
			}
		}
	}()
	return d
}

func (d *driver) stop() (changes, fails int) {
	d.cancel()
	<-d.done
	return d.changes, d.fails
}

// churnTable is the churn section: per proxy, its quiet run then each
// rate, from the rotation that ran both.
func churnTable(ts *targets, conns int, rates []int, res map[string][]sample) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Churn: the upstream set changes N times a second (wrk -t1 -c%d -d%s, %d rounds)\n\n", conns, *duration, *rounds)
	fmt.Fprintf(&b, `Each change adds the third backend or removes it again (the set alternates between 2 and 3 upstreams),
through the proxy's own way: imagelb PUT/DELETE of container c of image 1 on the admin endpoint (no
reload); stock Caddy PATCH /id/rp/upstreams on its admin API (each change is a config reload);
nginx a rewritten upstream block and nginx -s reload; HAProxy its runtime API (add server + enable server,
disable server + del server; no reload); the Go reference PUT/DELETE on its admin endpoint (an atomically
swapped list). Changes are made one after another; "changes/s" is what was achieved. Before each run %d
upgraded (WebSocket-handshake echo) connections are opened through the proxy, on the two upstreams that
never leave; "long-lived alive" counts those still echoing after the run. N = 0 is the quiet run of the same
round. Ratios are to stock Caddy's and the Go reference's quiet runs of the same round.

Where the mechanisms differ: a Caddy config reload replaces the reverse_proxy handler, and the old one's
Cleanup closes the upgraded connections it proxied (reverse_proxy's stream_close_delay, default 0) while the
old server closes its idle keep-alive connections (a request racing that close is a read error for wrk);
nginx -s reload parses the whole configuration in a new process before it signals the master, so its
achieved rate is what that allows on this machine under load, and old workers finish their connections;
imagelb, HAProxy's runtime API and the Go reference change a list in place.

`, *wsConns)
	b.WriteString("| proxy | N/s | changes/s | failed changes | req/s | p50 ms | p99 ms | errors | errors per 100k req | req/s ÷ stock Caddy quiet | req/s ÷ Go ref quiet | p99 ÷ Go ref quiet | long-lived alive |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	stock, goref := res[quietKey(ts.stock, conns)], res[quietKey(ts.goref, conns)]
	for _, t := range ts.churning() {
		row := func(label string, ss []sample) {
			changes := "–"
			fails := "–"
			if label != "0" {
				changes = statOf(over(ss, func(s sample) float64 { return float64(s.changes) / max(s.seconds, 1) })).cell("%.1f")
				fails = fmt.Sprint(sum(ss, func(s sample) int { return s.changeFails }))
			}
			errs, reqs := sum(ss, func(s sample) int { return s.errors }), sum(ss, func(s sample) int { return s.requests })
			per100k := "–"
			if reqs > 0 {
				per100k = fmt.Sprintf("%.1f", float64(errs)/float64(reqs)*1e5)
			}
			alive := fmt.Sprintf("%d/%d", sum(ss, func(s sample) int { return s.wsAlive }), sum(ss, func(s sample) int { return s.wsOpened }))
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %d | %s | %s | %s | %s | %s |\n", t.name, label, changes, fails,
				statOf(over(ss, rps)).cell("%.0f"), statOf(over(ss, p50)).cell("%.2f"), statOf(over(ss, p99)).cell("%.2f"),
				errs, per100k, statOf(ratios(ss, stock, rps)).cell("%.2f"), statOf(ratios(ss, goref, rps)).cell("%.2f"),
				statOf(ratios(ss, goref, p99)).cell("%.2f"), alive)
		}
		row("0", res[quietKey(t, conns)])
		for _, n := range rates {
			row(fmt.Sprint(n), res[churnKey(t, conns, n)])
		}
	}
	b.WriteString("\n")
	for _, t := range ts.churning() {
		if t.churnNote != nil {
			if note := t.churnNote(); note != "" {
				b.WriteString(note + "\n\n")
			}
		}
	}
	return b.String()
}

// quietTable is the quiet comparison at one connection count.
func quietTable(ts *targets, conns int, res map[string][]sample) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Quiet, HTTP/1.1: %d connections (wrk -t1 -c%d -d%s --latency, %d rounds)\n\n", conns, conns, *duration, *rounds)
	b.WriteString("| target | req/s | p50 ms | p99 ms | CPU s / 10k req | req/s ÷ stock Caddy | req/s ÷ Go ref | req/s ÷ nginx | p99 ÷ stock Caddy | CPU ÷ stock Caddy | errors | long-lived alive |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	stock, goref, nginx := res[quietKey(ts.stock, conns)], res[quietKey(ts.goref, conns)], res[quietKey(ts.nginx, conns)]
	cpu := func(s sample) float64 { return s.cpuPer10k }
	for _, t := range ts.quiet() {
		ss := res[quietKey(t, conns)]
		cpuCell, cpuRatio := "–", "–"
		if t.pid != 0 {
			cpuCell = statOf(over(ss, cpu)).cell("%.3f")
			cpuRatio = statOf(ratios(ss, stock, cpu)).cell("%.2f")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d/%d |\n", t.name,
			statOf(over(ss, rps)).cell("%.0f"), statOf(over(ss, p50)).cell("%.2f"), statOf(over(ss, p99)).cell("%.2f"), cpuCell,
			statOf(ratios(ss, stock, rps)).cell("%.2f"), statOf(ratios(ss, goref, rps)).cell("%.2f"), statOf(ratios(ss, nginx, rps)).cell("%.2f"),
			statOf(ratios(ss, stock, p99)).cell("%.2f"), cpuRatio, sum(ss, func(s sample) int { return s.errors }),
			sum(ss, func(s sample) int { return s.wsAlive }), sum(ss, func(s sample) int { return s.wsOpened }))
	}
	b.WriteString("\n")
	return b.String()
}
