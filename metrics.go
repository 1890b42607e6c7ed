package imagelb

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imagelb/caddy-imagelb/registry"
)

// metrics exports the registry's own counters to Prometheus when scraped.
// Nothing is counted twice and the request path pays nothing for it: the
// figures are the atomics the registry keeps anyway, read at scrape time
// from the current snapshot, so a removed container's series vanish with it.
// It is registered into each config's metrics registry (Caddy makes a new
// one per load), so the series appear on the admin /metrics and wherever
// the user's metrics handler is.
var metrics = newCollector()

type collector struct {
	requests, failures, inFlight, duration                              *prometheus.Desc
	ctrRequests, ctrFailures, ctrInFlight, ctrDuration, healthy, checks *prometheus.Desc
	operations, services, containers, storeUp, storeRevision            *prometheus.Desc
	turnedAway, retriesDenied, ejected, ejections, waiting              *prometheus.Desc
	splitRequests, mirrorCopies                                         *prometheus.Desc
}

func newCollector() *collector {
	img := []string{"image_id"}
	ctr := []string{"image_id", "container_id"}
	d := prometheus.NewDesc
	return &collector{
		requests:    d("imagelb_requests_total", "Client requests proxied for an image, by status class (none: no response).", append(img, "code"), nil),
		failures:    d("imagelb_request_failures_total", "Client requests for an image answered with a 5xx or not at all.", img, nil),
		inFlight:    d("imagelb_requests_in_flight", "Client requests for an image not finished yet.", img, nil),
		duration:    d("imagelb_request_duration_seconds", "Duration of client requests for an image, retries included.", img, nil),
		ctrRequests: d("imagelb_container_requests_total", "Attempts sent to a container, by status class (none: no response).", append(ctr, "code"), nil),
		ctrFailures: d("imagelb_container_failures_total", "Attempts sent to a container that failed (no response, or a 5xx).", ctr, nil),
		ctrInFlight: d("imagelb_container_requests_in_flight", "Attempts in flight at a container.", ctr, nil),
		ctrDuration: d("imagelb_container_request_duration_seconds", "Duration of attempts sent to a container.", ctr, nil),
		healthy:     d("imagelb_container_healthy", "1 if the container's status is healthy, else 0.", ctr, nil),
		checks:      d("imagelb_health_checks_total", "Active health checks of a container, by result (pass, fail).", append(ctr, "result"), nil),
		operations:  d("imagelb_registry_operations_total", "Changes applied to the registry, by operation (register, remove, put_container, patch_container, remove_container).", []string{"operation"}, nil),
		services:    d("imagelb_services", "Services registered.", nil, nil),
		storeUp: d("imagelb_store_up", "1 if the registry's store answers (status ok), 0 while it is degraded "+
			"(etcd unreachable: this node serves the last state it saw and refuses writes).", []string{"kind"}, nil),
		storeRevision: d("imagelb_store_revision", "The shared store's revision this node has applied.", []string{"kind"}, nil),
		containers:    d("imagelb_containers", "Containers registered, by status.", []string{"status"}, nil),
		turnedAway: d("imagelb_requests_turned_away_total", "Client requests for an image answered before reaching a container, "+
			"by reason (rate_limit: 429, max_in_flight: 503).", append(img, "reason"), nil),
		retriesDenied: d("imagelb_retries_denied_total", "Retries the image's retry budget refused.", img, nil),
		ejected:       d("imagelb_container_ejected", "1 if outlier ejection keeps the container out of rotation, else 0.", ctr, nil),
		ejections:     d("imagelb_container_ejections_total", "Times outlier ejection took the container out of rotation.", ctr, nil),
		waiting:       d("imagelb_requests_waiting", "Client requests held while an on_demand image starts.", img, nil),
		splitRequests: d("imagelb_split_requests_total", "Requests of an image that its split sent to another image.", img, nil),
		mirrorCopies: d("imagelb_mirror_copies_total", "Copies other images' mirrors made for this image, by result (sent, failed: "+
			"no answer or a 5xx, dropped: past max_in_flight or no container, too_large: body above max_body); apart from its real traffic.",
			append(img, "result"), nil),
	}
}

// Describe sends the descriptors of every metric.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.failures, c.inFlight, c.duration, c.ctrRequests, c.ctrFailures,
		c.ctrInFlight, c.ctrDuration, c.healthy, c.checks, c.operations, c.services, c.containers,
		c.turnedAway, c.retriesDenied, c.ejected, c.ejections, c.storeUp, c.storeRevision, c.waiting, c.splitRequests, c.mirrorCopies} {
		ch <- d
	}
}

// classNames labels the status classes of registry.Traffic.Classes.
var classNames = [6]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

// bucketStep thins the registry's fine buckets (19% apart) to the
// Prometheus histogram's (about 2.8x apart), which is exact: the counts are
// cumulative at each exported bound.
const bucketStep = 6

// Collect reads the current registry.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	reg := currentRegistry()
	if reg == nil {
		return
	}
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	byStatus := map[registry.Status]int{}
	svcs := reg.Services()
	for _, s := range svcs {
		id := strconv.FormatInt(s.ImageID, 10)
		c.counters(ch, c.requests, c.failures, c.inFlight, c.duration, &s.State.Counters, id)
		ch <- prometheus.MustNewConstMetric(c.turnedAway, counter, float64(s.State.RateLimited.Load()), id, "rate_limit")
		ch <- prometheus.MustNewConstMetric(c.turnedAway, counter, float64(s.State.Shed.Load()), id, "max_in_flight")
		ch <- prometheus.MustNewConstMetric(c.retriesDenied, counter, float64(s.State.RetriesDenied.Load()), id)
		if s.Options.OnDemand != nil {
			ch <- prometheus.MustNewConstMetric(c.waiting, gauge, float64(s.State.Waiting.Load()), id)
		}
		if n := s.State.SplitRequests.Load(); n > 0 || len(s.Options.Split) > 0 {
			ch <- prometheus.MustNewConstMetric(c.splitRequests, counter, float64(n), id)
		}
		if m := &s.State.Mirror; m.Requests.Load()+m.Dropped.Load()+m.TooLarge.Load() > 0 {
			for _, r := range []struct {
				name string
				n    int64
			}{{"sent", m.Requests.Load()}, {"failed", m.Failures.Load()}, {"dropped", m.Dropped.Load()}, {"too_large", m.TooLarge.Load()}} {
				ch <- prometheus.MustNewConstMetric(c.mirrorCopies, counter, float64(r.n), id, r.name)
			}
		}
		for _, ctr := range s.Containers {
			byStatus[ctr.Status]++
			st := ctr.Stats
			c.counters(ch, c.ctrRequests, c.ctrFailures, c.ctrInFlight, c.ctrDuration, &st.Counters, id, ctr.ContainerID)
			healthy := 0.0
			if ctr.Status == registry.StatusHealthy {
				healthy = 1
			}
			ch <- prometheus.MustNewConstMetric(c.healthy, gauge, healthy, id, ctr.ContainerID)
			ch <- prometheus.MustNewConstMetric(c.checks, counter, float64(st.ChecksPassed.Load()), id, ctr.ContainerID, "pass")
			ch <- prometheus.MustNewConstMetric(c.checks, counter, float64(st.ChecksFailed.Load()), id, ctr.ContainerID, "fail")
			ejected := 0.0
			if st.Ejected() {
				ejected = 1
			}
			ch <- prometheus.MustNewConstMetric(c.ejected, gauge, ejected, id, ctr.ContainerID)
			ch <- prometheus.MustNewConstMetric(c.ejections, counter, float64(st.Ejections()), id, ctr.ContainerID)
		}
	}
	for op, n := range reg.Operations() {
		ch <- prometheus.MustNewConstMetric(c.operations, counter, float64(n), op.String())
	}
	ch <- prometheus.MustNewConstMetric(c.services, gauge, float64(len(svcs)))
	for _, st := range []registry.Status{registry.StatusHealthy, registry.StatusUnhealthy, registry.StatusStarting, registry.StatusDraining, registry.StatusUnknown} {
		ch <- prometheus.MustNewConstMetric(c.containers, gauge, float64(byStatus[st]), string(st))
	}
	if app := running.Load(); app != nil {
		st := app.holder.storeState()
		up := 0.0
		if st.Status == "ok" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.storeUp, gauge, up, st.Kind)
		ch <- prometheus.MustNewConstMetric(c.storeRevision, gauge, float64(st.Revision), st.Kind)
	}
}

// counters sends the request counters of a service or a container.
func (c *collector) counters(ch chan<- prometheus.Metric, requests, failures, inFlight, duration *prometheus.Desc,
	k *registry.Counters, labels ...string) {
	t := k.Traffic()
	for class := range t.Classes {
		if n := t.Classes[class].Load(); n > 0 {
			ch <- prometheus.MustNewConstMetric(requests, prometheus.CounterValue, float64(n), append(labels, classNames[class])...)
		}
	}
	ch <- prometheus.MustNewConstMetric(failures, prometheus.CounterValue, float64(k.Failures.Load()), labels...)
	ch <- prometheus.MustNewConstMetric(inFlight, prometheus.GaugeValue, float64(k.InFlight.Load()), labels...)
	counts, sum := t.Latency.Snapshot()
	buckets := make(map[float64]uint64, registry.NumBuckets/bucketStep+1)
	var cumulative, total uint64
	for i, n := range counts {
		cumulative += n
		if i%bucketStep == bucketStep-1 && i < registry.NumBuckets-1 {
			buckets[registry.BucketBound(i).Seconds()] = cumulative
		}
	}
	total = cumulative
	ch <- prometheus.MustNewConstHistogram(duration, total, sum.Seconds(), buckets, labels...)
}

// registerMetrics adds the collector to a config's metrics registry.
func registerMetrics(r *prometheus.Registry) error {
	if r == nil {
		return nil
	}
	err := r.Register(metrics)
	if _, already := err.(prometheus.AlreadyRegisteredError); already {
		return nil
	}
	return err
}

// Interface guards
var _ prometheus.Collector = (*collector)(nil)
