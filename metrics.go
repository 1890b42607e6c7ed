package imagelb

import (
	"container/heap"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// metrics exports the registry's own counters to Prometheus when scraped.
// Nothing is counted twice and the request path pays nothing for it: the
// figures are the atomics the registry keeps anyway, read at scrape time
// from the current snapshot, so a removed container's series vanish with it.
// It is registered into each config's metrics registry (Caddy makes a new
// one per load), so the series appear on the admin /metrics and wherever
// the user's metrics handler is. What it exports beyond the registry-wide
// series is chosen by the app's metrics options (MetricsConfig).
var metrics = newCollector()

// MetricsConfig chooses the Prometheus series imagelb exports beyond the
// registry-wide ones (totals, containers by status, registry operations,
// the store), which are always there. The default keeps a scrape small
// whatever the registry's size: per-image series for the busiest images
// only, and no per-container series. A config load whose choice would
// export more than a million series at the registry's current size logs a
// warning naming the option to turn off.
type MetricsConfig struct {
	// Export the per-image series of every image, not only the
	// top_images busiest: about 24 series per image that has served a
	// request and 5 per idle one. Default: false.
	PerImage bool `json:"per_image,omitempty"`
	// Export the per-container series of every container: about 26 series
	// per container that has served a request and 7 per idle one.
	// Default: false.
	PerContainer bool `json:"per_container,omitempty"`
	// How many images get per-image series when per_image is off: those
	// with the most client requests since they were registered (ties to
	// the lower image_id); 0 exports none. Default: 100.
	TopImages *int `json:"top_images,omitempty"`
}

// DefaultTopImages is the default of MetricsConfig.TopImages.
const DefaultTopImages = 100

// seriesWarning is the number of series past which a config load warns.
const seriesWarning = 1_000_000

// Series a scrape exports per image and per container that has served a
// request (one status class: each other class adds one), and those of the
// whole registry (operations, services, containers by status, the store,
// the totals): the figures of the warning and of the docs' cardinality
// table.
const (
	seriesPerImage     = 1 + 1 + 1 + histogramSeries + 2 + 1 // requests by class, failures, in flight, duration, turned away, retries denied
	seriesPerContainer = 1 + 1 + 1 + histogramSeries + 1 + 2 + 1 + 1
	seriesRegistry     = 5 + 1 + 5 + 2 + 3
	histogramSeries    = registry.NumBuckets/bucketStep + 2 // the bounds and +Inf, _sum, _count
)

// metricsOptions are the options resolved.
type metricsOptions struct {
	perImage, perContainer bool
	top                    int
}

func (m *MetricsConfig) options() metricsOptions {
	o := metricsOptions{top: DefaultTopImages}
	if m == nil {
		return o
	}
	o.perImage, o.perContainer = m.PerImage, m.PerContainer
	if m.TopImages != nil {
		o.top = *m.TopImages
	}
	return o
}

// series estimates the series a scrape exports for a registry of this size
// once every image and container has served a request.
func (o metricsOptions) series(images, containers int) int {
	n := seriesRegistry + min(images, o.top)*seriesPerImage
	if o.perImage {
		n = seriesRegistry + images*seriesPerImage
	}
	if o.perContainer {
		n += containers * seriesPerContainer
	}
	return n
}

// warnSeries logs once per config load when the options would export more
// than a million series at the registry's current size, naming the options
// to turn off, the largest share first.
func (a *App) warnSeries() {
	o, sum := a.Metrics.options(), a.reg.Summary()
	n := o.series(sum.Services, sum.Containers)
	if n <= seriesWarning {
		return
	}
	var off []string
	if o.perContainer {
		off = append(off, "per_container")
	}
	if o.perImage {
		off = append(off, "per_image")
		if sum.Services*seriesPerImage > sum.Containers*seriesPerContainer {
			off[0], off[len(off)-1] = off[len(off)-1], off[0]
		}
	}
	if len(off) == 0 {
		off = append(off, "top_images")
	}
	a.logger.Warn("metrics options export over a million series at this registry's size: a scrape this large strains "+
		"Prometheus and this process; turn off the options named in turn_off (metrics block of the imagelb app)",
		zap.Int("series", n), zap.Int("services", sum.Services), zap.Int("containers", sum.Containers),
		zap.Strings("turn_off", off))
}

type collector struct {
	requests, failures, inFlight, duration                              *prometheus.Desc
	ctrRequests, ctrFailures, ctrInFlight, ctrDuration, healthy, checks *prometheus.Desc
	operations, services, containers, storeUp, storeRevision            *prometheus.Desc
	turnedAway, retriesDenied, ejected, ejections, waiting              *prometheus.Desc
	splitRequests, mirrorCopies                                         *prometheus.Desc
	allRequests, allFailures, allInFlight                               *prometheus.Desc
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
		allRequests: d("imagelb_registry_requests_total", "Client requests finished, of every image (removed ones included), "+
			"since the process started.", nil, nil),
		allFailures: d("imagelb_registry_request_failures_total", "Client requests of every image (removed ones included) "+
			"answered with a 5xx or not at all, since the process started.", nil, nil),
		allInFlight: d("imagelb_registry_requests_in_flight", "Client requests of every image not finished yet.", nil, nil),
	}
}

// Describe sends the descriptors of every metric.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.failures, c.inFlight, c.duration, c.ctrRequests, c.ctrFailures,
		c.ctrInFlight, c.ctrDuration, c.healthy, c.checks, c.operations, c.services, c.containers,
		c.turnedAway, c.retriesDenied, c.ejected, c.ejections, c.storeUp, c.storeRevision, c.waiting, c.splitRequests, c.mirrorCopies,
		c.allRequests, c.allFailures, c.allInFlight} {
		ch <- d
	}
}

// classNames labels the status classes of registry.Traffic.Classes.
var classNames = [6]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

// bucketStep thins the registry's fine buckets (19% apart) to the
// Prometheus histogram's (about 2.8x apart), which is exact: the counts are
// cumulative at each exported bound.
const bucketStep = 6

// Collect reads the current registry's snapshot and sends its series one
// at a time, as it walks the services: nothing is gathered beforehand but
// the busiest images when only those are exported.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	app := running.Load()
	if app == nil || app.reg == nil {
		return
	}
	reg, o := app.reg, app.Metrics.options()
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	var byStatus [len(statuses)]int
	var services int
	var inFlight int64
	busiest := busiestImages{max: o.top}
	reg.Each(func(s *registry.Service) {
		services++
		inFlight += s.State.InFlight.Load()
		id := ""
		if o.perImage || o.perContainer {
			id = strconv.FormatInt(s.ImageID, 10)
		}
		if o.perImage {
			c.image(ch, s, id)
		} else {
			busiest.offer(s)
		}
		for _, ctr := range s.Containers {
			if i := statusIndex(ctr.Status); i >= 0 {
				byStatus[i]++
			}
			if o.perContainer {
				c.container(ch, ctr, id)
			}
		}
	})
	for _, r := range busiest.top {
		c.image(ch, r.svc, strconv.FormatInt(r.svc.ImageID, 10))
	}
	total := reg.CountedTotal()
	ch <- prometheus.MustNewConstMetric(c.allRequests, counter, float64(total.Requests))
	ch <- prometheus.MustNewConstMetric(c.allFailures, counter, float64(total.FailedRequests))
	ch <- prometheus.MustNewConstMetric(c.allInFlight, gauge, float64(inFlight))
	for op, n := range reg.Operations() {
		ch <- prometheus.MustNewConstMetric(c.operations, counter, float64(n), op.String())
	}
	ch <- prometheus.MustNewConstMetric(c.services, gauge, float64(services))
	for i, st := range statuses {
		ch <- prometheus.MustNewConstMetric(c.containers, gauge, float64(byStatus[i]), string(st))
	}
	if app.holder != nil {
		st := app.holder.storeState()
		up := 0.0
		if st.Status == "ok" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.storeUp, gauge, up, st.Kind)
		ch <- prometheus.MustNewConstMetric(c.storeRevision, gauge, float64(st.Revision), st.Kind)
	}
}

// statuses are the container statuses imagelb_containers counts.
var statuses = [...]registry.Status{registry.StatusHealthy, registry.StatusUnhealthy, registry.StatusStarting,
	registry.StatusDraining, registry.StatusUnknown}

func statusIndex(st registry.Status) int {
	for i, s := range statuses {
		if s == st {
			return i
		}
	}
	return -1
}

// image sends the series of one image.
func (c *collector) image(ch chan<- prometheus.Metric, s *registry.Service, id string) {
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	c.counters(ch, c.requests, c.failures, c.inFlight, c.duration, &s.State.Counters, id)
	ch <- prometheus.MustNewConstMetric(c.turnedAway, counter, float64(s.State.Extra().RateLimited.Load()), id, "rate_limit")
	ch <- prometheus.MustNewConstMetric(c.turnedAway, counter, float64(s.State.Extra().Shed.Load()), id, "max_in_flight")
	ch <- prometheus.MustNewConstMetric(c.retriesDenied, counter, float64(s.State.Extra().RetriesDenied.Load()), id)
	if s.Options.OnDemand != nil {
		ch <- prometheus.MustNewConstMetric(c.waiting, gauge, float64(s.State.Extra().Waiting.Load()), id)
	}
	if n := s.State.Extra().SplitRequests.Load(); n > 0 || len(s.Options.Split) > 0 {
		ch <- prometheus.MustNewConstMetric(c.splitRequests, counter, float64(n), id)
	}
	if m := &s.State.Extra().Mirror; m.Requests.Load()+m.Dropped.Load()+m.TooLarge.Load() > 0 {
		for _, r := range []struct {
			name string
			n    int64
		}{{"sent", m.Requests.Load()}, {"failed", m.Failures.Load()}, {"dropped", m.Dropped.Load()}, {"too_large", m.TooLarge.Load()}} {
			ch <- prometheus.MustNewConstMetric(c.mirrorCopies, counter, float64(r.n), id, r.name)
		}
	}
}

// container sends the series of one container of the image id.
func (c *collector) container(ch chan<- prometheus.Metric, ctr *registry.Container, id string) {
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
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

// busiestImages keeps the max services with the most client requests
// offered to it: a min-heap, so the least busy of them is the one to beat.
type busiestImages struct {
	max int
	top []rankedImage
}

type rankedImage struct {
	requests int64 // read once: the heap must not see it change
	svc      *registry.Service
}

func (b *busiestImages) offer(s *registry.Service) {
	if b.max <= 0 {
		return
	}
	r := rankedImage{s.State.Requests.Load(), s}
	if len(b.top) < b.max {
		heap.Push(b, r)
		return
	}
	if b.less(0, r) {
		b.top[0] = r
		heap.Fix(b, 0)
	}
}

// less reports whether the i-th kept image is less busy than r.
func (b *busiestImages) less(i int, r rankedImage) bool {
	t := b.top[i]
	return t.requests < r.requests || t.requests == r.requests && t.svc.ImageID > r.svc.ImageID
}

func (b *busiestImages) Len() int           { return len(b.top) }
func (b *busiestImages) Less(i, j int) bool { return b.less(i, b.top[j]) }
func (b *busiestImages) Swap(i, j int)      { b.top[i], b.top[j] = b.top[j], b.top[i] }
func (b *busiestImages) Push(x any)         { b.top = append(b.top, x.(rankedImage)) }
func (b *busiestImages) Pop() any {
	r := b.top[len(b.top)-1]
	b.top = b.top[:len(b.top)-1]
	return r
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
	var finished uint64
	for _, n := range counts {
		finished += n
	}
	if finished == 0 {
		return // a histogram appears with the first finished request, as a client_golang HistogramVec's does
	}
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
