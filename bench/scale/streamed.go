package main

import (
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/scrape"
)

// The admin /imagelb/metrics: the streamed exposition, with what the
// metrics options add to the bounded set of Caddy's /metrics (run with
// -imagelb 'metrics {\n per_image\n per_container\n}' for every series).
// The body is counted as it arrives, never held.
func init() {
	probes = append(probes, probe{
		columns: []string{"`/imagelb/metrics`", "its series", "its scrape", "RSS growth of its scrape"},
		measure: func(n *node, images int) ([]string, error) {
			res, err := scrape.URL(&http.Client{Timeout: 10 * time.Minute}, n.admin+"/imagelb/metrics", n.pid)
			if err != nil {
				return nil, err
			}
			log.Printf("/imagelb/metrics: %s", res)
			return []string{size(res.Bytes), fmt.Sprint(res.Series), fmt.Sprintf("%.2f s", res.Elapsed.Seconds()),
				fmt.Sprintf("%.0f MiB", mib(res.RSSGrowth))}, nil
		},
	})
}
