package main

import (
	"fmt"
	"strings"
)

// httpsComparison is the quiet comparison over TLS, with the certificate of
// the run: HTTP/2 from h2load at each -tls-conns, HTTP/1.1 from wrk at each
// -tls-h1-conns; imagelb against stock Caddy and nginx.
func (e *env) httpsComparison(ts *targets) (string, error) {
	h2, err := ints("-tls-conns", *tlsConns)
	if err != nil {
		return "", err
	}
	var h1 []int
	if *tlsH1Conns != "" {
		if h1, err = ints("-tls-h1-conns", *tlsH1Conns); err != nil {
			return "", err
		}
	}
	type group struct {
		proto string
		conns int
	}
	var groups []group
	for _, c := range h2 {
		groups = append(groups, group{"h2", c})
	}
	for _, c := range h1 {
		groups = append(groups, group{"http/1.1", c})
	}
	key := func(g group, t target) string { return fmt.Sprintf("https %s c%d %s", g.proto, g.conns, t.name) }
	var cells []cell
	for _, g := range groups {
		for _, t := range ts.https() {
			cells = append(cells, cell{key: key(g, t), run: func() (sample, error) {
				if g.proto == "h2" {
					return h2load(t.url, g.conns, t.pid, *duration, e.dir)
				}
				return wrk(t.url, g.conns, t.pid, *duration, "")
			}})
		}
	}
	res, err := runRounds("https", cells)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Quiet, HTTPS (one self-signed ECDSA P-256 certificate for 127.0.0.1, made in the run; %d rounds)\n\n", *rounds)
	fmt.Fprintf(&b, "HTTP/2: `h2load -t1 -cC -m1 -D%d` (C clients, one stream each, so C requests in flight as with wrk; p50/p99 from its per-request log). HTTP/1.1: `wrk -t1 -cC -d%s` on https://. Backends are plain HTTP/1.1 with keep-alive.\n\n", int(duration.Seconds()), *duration)
	cpu := func(s sample) float64 { return s.cpuPer10k }
	for _, g := range groups {
		fmt.Fprintf(&b, "### %s, %d connections\n\n", map[string]string{"h2": "HTTP/2", "http/1.1": "HTTP/1.1 over TLS"}[g.proto], g.conns)
		b.WriteString("| target | req/s | p50 ms | p99 ms | CPU s / 10k req | req/s ÷ stock Caddy | req/s ÷ nginx | p99 ÷ stock Caddy | CPU ÷ stock Caddy | errors |\n|---|---|---|---|---|---|---|---|---|---|\n")
		stock, nginx := res[key(g, ts.stockTLS)], res[key(g, ts.nginxTLS)]
		for _, t := range ts.https() {
			ss := res[key(g, t)]
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", t.name,
				statOf(over(ss, rps)).cell("%.0f"), statOf(over(ss, p50)).cell("%.2f"), statOf(over(ss, p99)).cell("%.2f"),
				statOf(over(ss, cpu)).cell("%.3f"), statOf(ratios(ss, stock, rps)).cell("%.2f"), statOf(ratios(ss, nginx, rps)).cell("%.2f"),
				statOf(ratios(ss, stock, p99)).cell("%.2f"), statOf(ratios(ss, stock, cpu)).cell("%.2f"), sum(ss, func(s sample) int { return s.errors }))
		}
		b.WriteString("\n")
	}
	return b.String(), nil
}
