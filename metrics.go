package imagelb

import (
	"container/heap"
	"sort"
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
// one per load), so the bounded set of series (the registry-wide ones and
// the busiest images') appears on the admin /metrics and wherever the
// user's metrics handler is. The admin /imagelb/metrics streams the same
// series and what the app's metrics options (MetricsConfig) add.
var metrics collector

// MetricsConfig chooses the Prometheus series imagelb exports beyond the
// registry-wide ones (totals, containers by status, registry operations,
// the store), which are always there. Caddy's /metrics has a bounded set
// whatever the options: the registry-wide series and the per-image series
// of the top_images busiest images. The admin /imagelb/metrics has the
// same by default and what per_image and per_container add, written image
// by image as the scrape reads it, so its memory does not grow with its
// series. A config load whose choice would export more than a million
// series at the registry's current size logs a warning naming the option
// to turn off.
type MetricsConfig struct {
	// Export (on /imagelb/metrics) the per-image series of every image,
	// not only the top_images busiest: about 24 series per image that has served a
	// request and 5 per idle one. Default: false.
	PerImage bool `json:"per_image,omitempty"`
	// Export (on /imagelb/metrics) the per-container series of every
	// container: about 26 series
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
	a.logger.Warn("metrics options export over a million series at this registry's size: a scrape of /imagelb/metrics "+
		"this large strains Prometheus; turn off the options named in turn_off (metrics block of the imagelb app)",
		zap.Int("series", n), zap.Int("services", sum.Services), zap.Int("containers", sum.Containers),
		zap.Strings("turn_off", off))
}

// A family is one metric family imagelb exports: its name, help, type and
// labels, and what sends its series. Both expositions read this one table:
// the collector in Caddy's metrics registry (the bounded set) and the
// streamed /imagelb/metrics (everything the options choose), so their
// series are the same by construction.
type family struct {
	name, help string
	kind       prometheus.ValueType // prometheus.UntypedValue: a histogram
	scope      scope
	extra      string // the label beyond image_id and container_id, "" none
	// order is the labels in the exposition's order (by name): 'i'
	// image_id, 'c' container_id, 'e' extra.
	order []byte
	desc  *prometheus.Desc
	// Exactly one of these sends the family's series: of the whole
	// registry, of one image, or of one container of the image id.
	whole     func(s sink, f *family, w *wide)
	image     func(s sink, f *family, svc *registry.Service)
	container func(s sink, f *family, id int64, c *registry.Container)
}

type scope uint8

const (
	registryScope scope = iota
	imageScope
	containerScope
	// rolloutScope: a registry-wide family labelled by image_id, one
	// series per rollout under way (bounded by the rollouts, not the
	// registry), in the bounded set whatever the options.
	rolloutScope
)

const histogramKind = prometheus.UntypedValue

// sink receives a family's series. A series has the family's labels: the
// image id (image and container scopes), the container id (container
// scope) and the extra label. The arguments are values, so that the
// streamed exposition allocates nothing per series.
type sink interface {
	sample(f *family, v float64, id int64, ctr, extra string)
	histogram(f *family, h hist, id int64, ctr string)
}

// hist is a histogram at the exported bounds (bounds): cumulative counts,
// then the count and sum of every observation.
type hist struct {
	cumulative [len(bounds)]uint64
	count      uint64
	sum        float64
}

// bounds are the exported upper bounds, in seconds, and boundIndex the
// registry bucket each closes: every bucketStep-th of the registry's fine
// buckets, the last (unbounded) one left to +Inf.
var bounds, boundIndex = func() (b [histogramBounds]float64, idx [histogramBounds]int) {
	n := 0
	for i := range registry.NumBuckets - 1 {
		if i%bucketStep == bucketStep-1 {
			b[n], idx[n] = registry.BucketBound(i).Seconds(), i
			n++
		}
	}
	return b, idx
}()

const histogramBounds = (registry.NumBuckets - 1) / bucketStep

// histOf reads a histogram from counters; ok is false before the first
// finished request (no histogram is exported then, as a client_golang
// HistogramVec has none before its first observation).
func histOf(k *registry.Counters) (h hist, ok bool) {
	counts, sum := k.Traffic().Latency.Snapshot()
	var cumulative uint64
	next := 0
	for i, n := range counts {
		cumulative += n
		if next < len(boundIndex) && i == boundIndex[next] {
			h.cumulative[next] = cumulative
			next++
		}
	}
	h.count, h.sum = cumulative, sum.Seconds()
	return h, cumulative > 0
}

// wide is what the registry-wide families read, gathered in one walk.
type wide struct {
	services int
	byStatus [len(statuses)]int
	inFlight int64
	total    registry.Usage
	ops      map[registry.Op]int64
	store    *storeState
	rollouts []rolloutSeries
}

// rolloutSeries is a rollout under way: its stable image, its canary and
// the percent it sends to the canary.
type rolloutSeries struct {
	image, canary int64
	percent       float64
}

// classNames labels the status classes of registry.Traffic.Classes.
var classNames = [6]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

// bucketStep thins the registry's fine buckets (19% apart) to the
// Prometheus histogram's (about 2.8x apart), which is exact: the counts are
// cumulative at each exported bound.
const bucketStep = 6

// families is every family, by name: the order of the streamed exposition
// (and of client_golang's).
var families = func() []*family {
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	fs := []*family{
		{name: "imagelb_requests_total", help: "Client requests proxied for an image, by status class (none: no response).",
			kind: counter, scope: imageScope, extra: "code",
			image: func(s sink, f *family, svc *registry.Service) { classes(s, f, &svc.State.Counters, svc.ImageID, "") }},
		{name: "imagelb_request_failures_total", help: "Client requests for an image answered with a 5xx or not at all.",
			kind: counter, scope: imageScope,
			image: func(s sink, f *family, svc *registry.Service) {
				s.sample(f, float64(svc.State.Failures.Load()), svc.ImageID, "", "")
			}},
		{name: "imagelb_requests_in_flight", help: "Client requests for an image not finished yet.",
			kind: gauge, scope: imageScope,
			image: func(s sink, f *family, svc *registry.Service) {
				s.sample(f, float64(svc.State.InFlight.Load()), svc.ImageID, "", "")
			}},
		{name: "imagelb_request_duration_seconds", help: "Duration of client requests for an image, retries included.",
			kind: histogramKind, scope: imageScope,
			image: func(s sink, f *family, svc *registry.Service) {
				if h, ok := histOf(&svc.State.Counters); ok {
					s.histogram(f, h, svc.ImageID, "")
				}
			}},
		{name: "imagelb_requests_turned_away_total", help: "Client requests for an image answered before reaching a container, " +
			"by reason (rate_limit: 429, max_in_flight: 503).",
			kind: counter, scope: imageScope, extra: "reason",
			image: func(s sink, f *family, svc *registry.Service) {
				s.sample(f, float64(svc.State.Extra().RateLimited.Load()), svc.ImageID, "", "rate_limit")
				s.sample(f, float64(svc.State.Extra().Shed.Load()), svc.ImageID, "", "max_in_flight")
			}},
		{name: "imagelb_retries_denied_total", help: "Retries the image's retry budget refused.",
			kind: counter, scope: imageScope,
			image: func(s sink, f *family, svc *registry.Service) {
				s.sample(f, float64(svc.State.Extra().RetriesDenied.Load()), svc.ImageID, "", "")
			}},
		{name: "imagelb_requests_waiting", help: "Client requests held while an on_demand image starts.",
			kind: gauge, scope: imageScope,
			image: func(s sink, f *family, svc *registry.Service) {
				if svc.Options.OnDemand != nil {
					s.sample(f, float64(svc.State.Extra().Waiting.Load()), svc.ImageID, "", "")
				}
			}},
		{name: "imagelb_split_requests_total", help: "Requests of an image that its split sent to another image.",
			kind: counter, scope: imageScope,
			image: func(s sink, f *family, svc *registry.Service) {
				if n := svc.State.Extra().SplitRequests.Load(); n > 0 || len(svc.Options.Split) > 0 {
					s.sample(f, float64(n), svc.ImageID, "", "")
				}
			}},
		{name: "imagelb_mirror_copies_total", help: "Copies other images' mirrors made for this image, by result (sent, failed: " +
			"no answer or a 5xx, dropped: past max_in_flight or no container, too_large: body above max_body); apart from its real traffic.",
			kind: counter, scope: imageScope, extra: "result",
			image: func(s sink, f *family, svc *registry.Service) {
				m := &svc.State.Extra().Mirror
				if m.Requests.Load()+m.Dropped.Load()+m.TooLarge.Load() == 0 {
					return
				}
				s.sample(f, float64(m.Requests.Load()), svc.ImageID, "", "sent")
				s.sample(f, float64(m.Failures.Load()), svc.ImageID, "", "failed")
				s.sample(f, float64(m.Dropped.Load()), svc.ImageID, "", "dropped")
				s.sample(f, float64(m.TooLarge.Load()), svc.ImageID, "", "too_large")
			}},

		{name: "imagelb_container_requests_total", help: "Attempts sent to a container, by status class (none: no response).",
			kind: counter, scope: containerScope, extra: "code",
			container: func(s sink, f *family, id int64, c *registry.Container) {
				classes(s, f, &c.Stats.Counters, id, c.ContainerID)
			}},
		{name: "imagelb_container_failures_total", help: "Attempts sent to a container that failed (no response, or a 5xx).",
			kind: counter, scope: containerScope,
			container: func(s sink, f *family, id int64, c *registry.Container) {
				s.sample(f, float64(c.Stats.Failures.Load()), id, c.ContainerID, "")
			}},
		{name: "imagelb_container_requests_in_flight", help: "Attempts in flight at a container.",
			kind: gauge, scope: containerScope,
			container: func(s sink, f *family, id int64, c *registry.Container) {
				s.sample(f, float64(c.Stats.InFlight.Load()), id, c.ContainerID, "")
			}},
		{name: "imagelb_container_request_duration_seconds", help: "Duration of attempts sent to a container.",
			kind: histogramKind, scope: containerScope,
			container: func(s sink, f *family, id int64, c *registry.Container) {
				if h, ok := histOf(&c.Stats.Counters); ok {
					s.histogram(f, h, id, c.ContainerID)
				}
			}},
		{name: "imagelb_container_healthy", help: "1 if the container's status is healthy, else 0.",
			kind: gauge, scope: containerScope,
			container: func(s sink, f *family, id int64, c *registry.Container) {
				s.sample(f, boolValue(c.Status == registry.StatusHealthy), id, c.ContainerID, "")
			}},
		{name: "imagelb_health_checks_total", help: "Active health checks of a container, by result (pass, fail).",
			kind: counter, scope: containerScope, extra: "result",
			container: func(s sink, f *family, id int64, c *registry.Container) {
				s.sample(f, float64(c.Stats.ChecksPassed.Load()), id, c.ContainerID, "pass")
				s.sample(f, float64(c.Stats.ChecksFailed.Load()), id, c.ContainerID, "fail")
			}},
		{name: "imagelb_container_ejected", help: "1 if outlier ejection keeps the container out of rotation, else 0.",
			kind: gauge, scope: containerScope,
			container: func(s sink, f *family, id int64, c *registry.Container) {
				s.sample(f, boolValue(c.Stats.Ejected()), id, c.ContainerID, "")
			}},
		{name: "imagelb_container_ejections_total", help: "Times outlier ejection took the container out of rotation.",
			kind: counter, scope: containerScope,
			container: func(s sink, f *family, id int64, c *registry.Container) {
				s.sample(f, float64(c.Stats.Ejections()), id, c.ContainerID, "")
			}},

		{name: "imagelb_registry_operations_total", help: "Changes applied to the registry, by operation (register, remove, " +
			"put_container, patch_container, remove_container).",
			kind: counter, extra: "operation",
			whole: func(s sink, f *family, w *wide) {
				for op, n := range w.ops {
					s.sample(f, float64(n), 0, "", op.String())
				}
			}},
		{name: "imagelb_services", help: "Services registered.", kind: gauge,
			whole: func(s sink, f *family, w *wide) { s.sample(f, float64(w.services), 0, "", "") }},
		{name: "imagelb_containers", help: "Containers registered, by status.", kind: gauge, extra: "status",
			whole: func(s sink, f *family, w *wide) {
				for i, st := range statuses {
					s.sample(f, float64(w.byStatus[i]), 0, "", string(st))
				}
			}},
		{name: "imagelb_store_up", help: "1 if the registry's store answers (status ok), 0 while it is degraded " +
			"(etcd unreachable: this node serves the last state it saw and refuses writes).", kind: gauge, extra: "kind",
			whole: func(s sink, f *family, w *wide) {
				if w.store != nil {
					s.sample(f, boolValue(w.store.Status == "ok"), 0, "", w.store.Kind)
				}
			}},
		{name: "imagelb_store_revision", help: "The shared store's revision this node has applied.", kind: gauge, extra: "kind",
			whole: func(s sink, f *family, w *wide) {
				if w.store != nil {
					s.sample(f, float64(w.store.Revision), 0, "", w.store.Kind)
				}
			}},
		{name: "imagelb_registry_requests_total", help: "Client requests finished, of every image (removed ones included), " +
			"since the process started.", kind: counter,
			whole: func(s sink, f *family, w *wide) { s.sample(f, float64(w.total.Requests), 0, "", "") }},
		{name: "imagelb_registry_request_failures_total", help: "Client requests of every image (removed ones included) " +
			"answered with a 5xx or not at all, since the process started.", kind: counter,
			whole: func(s sink, f *family, w *wide) { s.sample(f, float64(w.total.FailedRequests), 0, "", "") }},
		{name: "imagelb_registry_requests_in_flight", help: "Client requests of every image not finished yet.", kind: gauge,
			whole: func(s sink, f *family, w *wide) { s.sample(f, float64(w.inFlight), 0, "", "") }},
		{name: "imagelb_rollout_percent", help: "The share of an image's requests its rollout sends to the canary " +
			"(progressing, paused or promoted rollouts only: one series per rollout).",
			kind: gauge, scope: rolloutScope, extra: "canary_image_id",
			whole: func(s sink, f *family, w *wide) {
				for _, r := range w.rollouts {
					s.sample(f, r.percent, r.image, "", strconv.FormatInt(r.canary, 10))
				}
			}},
	}
	for _, f := range fs {
		var names []string
		switch f.scope {
		case imageScope, rolloutScope:
			names = []string{"image_id"}
		case containerScope:
			names = []string{"container_id", "image_id"}
		}
		if f.extra != "" {
			names = append(names, f.extra)
		}
		sort.Strings(names)
		for _, n := range names {
			switch n {
			case "image_id":
				f.order = append(f.order, 'i')
			case "container_id":
				f.order = append(f.order, 'c')
			default:
				f.order = append(f.order, 'e')
			}
		}
		f.desc = prometheus.NewDesc(f.name, f.help, names, nil)
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].name < fs[j].name })
	return fs
}()

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// classes sends the requests by status class of a service or a container:
// the classes that counted any.
func classes(s sink, f *family, k *registry.Counters, id int64, ctr string) {
	t := k.Traffic()
	for class := range t.Classes {
		if n := t.Classes[class].Load(); n > 0 {
			s.sample(f, float64(n), id, ctr, classNames[class])
		}
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

// exposition is one scrape's view: the registry's snapshot, the
// registry-wide figures and, unless every image is exported, the busiest.
type exposition struct {
	walk                   func(func(*registry.Service))
	wide                   wide
	perImage, perContainer bool
	busiest                busiestImages
}

// newExposition reads app's registry for one scrape with the options o.
func newExposition(app *App, o metricsOptions) *exposition {
	reg := app.reg
	e := &exposition{walk: reg.Walker(), perImage: o.perImage, perContainer: o.perContainer, busiest: busiestImages{max: o.top}}
	e.walk(func(s *registry.Service) {
		e.wide.services++
		e.wide.inFlight += s.State.InFlight.Load()
		if ro := s.Rollout; ro != nil && ro.State.Active() {
			e.wide.rollouts = append(e.wide.rollouts, rolloutSeries{image: s.ImageID, canary: ro.CanaryImageID, percent: ro.Percent})
		}
		for _, ctr := range s.Containers {
			if i := statusIndex(ctr.Status); i >= 0 {
				e.wide.byStatus[i]++
			}
		}
		if !o.perImage {
			e.busiest.offer(s)
		}
	})
	e.wide.total = reg.CountedTotal()
	e.wide.ops = reg.Operations()
	if app.holder != nil {
		st := app.holder.storeState()
		e.wide.store = &st
	}
	return e
}

// send sends family f's series: the whole family, so that a streamed
// family's lines are one group.
func (e *exposition) send(s sink, f *family) {
	switch f.scope {
	case registryScope, rolloutScope:
		f.whole(s, f, &e.wide)
	case imageScope:
		if e.perImage {
			e.walk(func(svc *registry.Service) { f.image(s, f, svc) })
			return
		}
		for _, r := range e.busiest.top {
			f.image(s, f, r.svc)
		}
	case containerScope:
		if e.perContainer {
			e.walk(func(svc *registry.Service) {
				for _, c := range svc.Containers {
					f.container(s, f, svc.ImageID, c)
				}
			})
		}
	}
}

// collector puts the bounded set of series into Caddy's metrics registry
// (its admin /metrics and any metrics handler): the registry-wide series
// and those of the top_images busiest images, whatever per_image and
// per_container say. client_golang gathers a scrape's every series in
// memory before it writes the first: the streamed /imagelb/metrics serves
// what the options add.
type collector struct{}

// Describe sends the descriptors of every metric.
func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range families {
		ch <- f.desc
	}
}

// Collect reads the current registry's snapshot and sends the bounded set.
func (collector) Collect(ch chan<- prometheus.Metric) {
	app := running.Load()
	if app == nil || app.reg == nil {
		return
	}
	o := app.Metrics.options()
	o.perImage, o.perContainer = false, false
	e := newExposition(app, o)
	s := chanSink{ch}
	for _, f := range families {
		e.send(s, f)
	}
}

// chanSink sends series to a Prometheus collector's channel.
type chanSink struct{ ch chan<- prometheus.Metric }

func (c chanSink) values(f *family, id int64, ctr, extra string) []string {
	out := make([]string, len(f.order))
	for i, o := range f.order {
		switch o {
		case 'i':
			out[i] = strconv.FormatInt(id, 10)
		case 'c':
			out[i] = ctr
		default:
			out[i] = extra
		}
	}
	return out
}

func (c chanSink) sample(f *family, v float64, id int64, ctr, extra string) {
	c.ch <- prometheus.MustNewConstMetric(f.desc, f.kind, v, c.values(f, id, ctr, extra)...)
}

func (c chanSink) histogram(f *family, h hist, id int64, ctr string) {
	buckets := make(map[float64]uint64, len(bounds))
	for i, b := range bounds {
		buckets[b] = h.cumulative[i]
	}
	c.ch <- prometheus.MustNewConstHistogram(f.desc, h.count, h.sum, buckets, c.values(f, id, ctr, "")...)
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
var _ prometheus.Collector = collector{}
