package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// scale registers 1, 100, 10,000 and 100,000 images (-scale; two
// containers each) in the imagelb process and measures requests spread at
// random over them, the memory per container, and registrations per second
// through the admin endpoint. It runs last: the registrations stay.
func (e *env) scale(t target) (string, error) {
	sizes, err := ints("-scale", *scaleSizes)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Scale (imagelb /api/v1/proxy, wrk -t1 -c32 -d%s, a random image per request, median of %d runs)\n\n", *duration, *rounds)
	b.WriteString("| images | containers | req/s | p99 ms | req/s ÷ 1 image | registrations/s | RSS MiB | KiB per container |\n|---|---|---|---|---|---|---|---|\n")
	registered := 1 // the static service
	baseRSS := rss(t.pid)
	var base float64
	for _, n := range sizes {
		start := time.Now()
		added := n - registered
		if err := e.registerImages(t.admin, registered+1, n+1); err != nil {
			return "", err
		}
		regRate := float64(added) / time.Since(start).Seconds()
		registered = max(registered, n)
		script := filepath.Join(e.dir, fmt.Sprintf("random-%d.lua", n))
		lua := fmt.Sprintf("math.randomseed(42)\nrequest = function()\n  return wrk.format(nil, \"/api/v1/proxy/\" .. math.random(1, %d) .. \"/\")\nend\n", n)
		if err := os.WriteFile(script, []byte(lua), 0o644); err != nil {
			return "", err
		}
		var res []sample
		for r := 0; r < *rounds; r++ {
			s, err := wrk(strings.TrimSuffix(t.url, "/api/v1/proxy/1/"), 32, t.pid, *duration, script)
			if err != nil {
				return "", err
			}
			res = append(res, s)
		}
		m := statOf(over(res, rps)).med
		if base == 0 {
			base = m
		}
		mem := rss(t.pid)
		perContainer := 0.0
		if n > 1 {
			perContainer = float64(mem-baseRSS) / 1024 / float64(2*n)
		}
		regCell := "–"
		if added > 0 {
			regCell = fmt.Sprintf("%.0f", regRate)
		}
		fmt.Fprintf(&b, "| %d | %d | %.0f | %.2f | %.2f | %s | %.0f | %.1f |\n", n, 2*n, m, statOf(over(res, p99)).med, m/base, regCell, float64(mem)/1024/1024, perContainer)
		log.Printf("scale %d images: %.0f req/s, p99 %.2f ms", n, m, statOf(over(res, p99)).med)
	}
	b.WriteString("\nRegistrations go through the admin endpoint, 16 at a time, persistence off (see bench/results/controlplane.md for durable registrations).\n\n")
	return b.String(), nil
}

// registerImages registers images [from, to) with the first two backends.
func (e *env) registerImages(admin string, from, to int) error {
	if from >= to {
		return nil
	}
	_, portA, _ := net.SplitHostPort(e.backends[0])
	_, portB, _ := net.SplitHostPort(e.backends[1])
	body := `[{"container_id":"a","port":` + portA + `},{"container_id":"b","port":` + portB + `}]`
	ids := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				resp, err := client.Post(fmt.Sprintf("%s/imagelb/services/%d/register?image_name=img%d", admin, id, id), "application/json", strings.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("register %d: %d", id, resp.StatusCode)
					return
				}
			}
		}()
	}
	var err error
feed:
	for id := from; id < to; id++ {
		select {
		case err = <-errs:
			break feed
		case ids <- id:
		}
	}
	close(ids)
	wg.Wait()
	if err == nil && len(errs) > 0 {
		err = <-errs
	}
	return err
}
