package registry

import (
	"math"
	"time"
)

// ContainerView is the API's JSON form of a container.
type ContainerView struct {
	ContainerID       string  `json:"container_id"`
	Name              string  `json:"name"`
	Host              string  `json:"host"`
	Port              int     `json:"port"`
	ImageID           int64   `json:"image_id"`
	Status            Status  `json:"status"`
	Weight            int     `json:"weight"`
	Zone              string  `json:"zone,omitempty"`
	Ejected           bool    `json:"ejected,omitempty"`
	ActiveConnections int64   `json:"active_connections"`
	TotalRequests     int64   `json:"total_requests"`
	FailedRequests    int64   `json:"failed_requests"`
	LastHealthCheck   *string `json:"last_health_check"`
	LastHealthError   *string `json:"last_health_error"`
	// RequestsPerSecond covers the last minute, as in the statistics.
	RequestsPerSecond float64 `json:"requests_per_second"`
	// What the orchestrator last pushed; null when never set.
	CPUUsage    *float64 `json:"cpu_usage"`
	MemoryUsage *float64 `json:"memory_usage"`
	DiskUsage   *float64 `json:"disk_usage"`
}

// ServiceView is the API's JSON form of a service.
type ServiceView struct {
	ImageID           int64           `json:"image_id"`
	ImageName         string          `json:"image_name"`
	Algorithm         Algorithm       `json:"algorithm"`
	ExternalPort      *int            `json:"external_port"`
	Containers        []ContainerView `json:"containers"`
	HealthyContainers int             `json:"healthy_containers"`
	TotalRequests     int64           `json:"total_requests"`
	FailedRequests    int64           `json:"failed_requests"`
	ActiveConnections int64           `json:"active_connections"`
	RequestsPerSecond float64         `json:"requests_per_second"`
	LastUpdated       *string         `json:"last_updated"`
	Static            bool            `json:"static"`
	// Waiting is the number of requests held while the image starts on
	// demand (always 0 for an image without on_demand).
	Waiting int64 `json:"waiting"`
	// Warning names the images the split or mirror refers to that are not
	// registered (any more); omitted when there is none.
	Warning string `json:"warning,omitempty"`
	// Rollout summarises the image's rollout (GET …/rollout has all of
	// it); omitted when there is none.
	Rollout *RolloutSummary `json:"rollout,omitempty"`
	TrafficCounters
	ServiceOptions
}

// RolloutSummary is a rollout in the Service: where it is.
type RolloutSummary struct {
	CanaryImageID int64        `json:"canary_image_id"`
	State         RolloutState `json:"state"`
	Step          int          `json:"step"`
	Steps         int          `json:"steps"`
	Percent       float64      `json:"percent"`
}

// TrafficCounters are the counters of split and mirror in the Service and
// the statistics: the requests this image's split sent elsewhere, and the
// copies other images' mirrors sent this one (apart from its real traffic:
// they are in none of the other counters).
type TrafficCounters struct {
	SplitRequests    int64 `json:"split_requests"`
	MirroredRequests int64 `json:"mirrored_requests"`
	MirrorFailures   int64 `json:"mirror_failures"`
	MirrorDropped    int64 `json:"mirror_dropped"`
	MirrorTooLarge   int64 `json:"mirror_too_large"`
}

func trafficCounters(st *ServiceState) TrafficCounters {
	return TrafficCounters{
		SplitRequests:    st.Extra().SplitRequests.Load(),
		MirroredRequests: st.Extra().Mirror.Requests.Load(),
		MirrorFailures:   st.Extra().Mirror.Failures.Load(),
		MirrorDropped:    st.Extra().Mirror.Dropped.Load(),
		MirrorTooLarge:   st.Extra().Mirror.TooLarge.Load(),
	}
}

// View returns the API form of the container of the given image.
func (c *Container) View(imageID int64) ContainerView {
	v := ContainerView{
		ContainerID:       c.ContainerID,
		Name:              c.Name,
		Host:              c.Host,
		Port:              c.Port,
		ImageID:           imageID,
		Status:            c.Status,
		Weight:            c.Weight,
		Zone:              c.Zone,
		Ejected:           c.Stats.Ejected(),
		ActiveConnections: c.Stats.InFlight.Load(),
		TotalRequests:     c.Stats.Requests.Load(),
		FailedRequests:    c.Stats.Failures.Load(),
		CPUUsage:          c.CPUUsage,
		MemoryUsage:       c.MemoryUsage,
		DiskUsage:         c.DiskUsage,
	}
	_, v.RequestsPerSecond = recentOf(&c.Stats.Counters)
	if at, errText := c.Stats.Health(); !at.IsZero() {
		s := at.UTC().Format(time.RFC3339Nano)
		v.LastHealthCheck = &s
		if errText != "" {
			v.LastHealthError = &errText
		}
	}
	return v
}

// View returns the API form of the service.
func (s *Service) View() ServiceView {
	v := ServiceView{
		ImageID:           s.ImageID,
		ImageName:         s.ImageName,
		Algorithm:         s.Algorithm,
		Containers:        make([]ContainerView, len(s.Containers)),
		HealthyContainers: s.HealthyCount(),
		TotalRequests:     s.State.Requests.Load() + s.State.Usage.Base().Requests,
		FailedRequests:    s.State.Failures.Load() + s.State.Usage.Base().FailedRequests,
		ActiveConnections: s.State.InFlight.Load(),
		Static:            s.Static,
		Waiting:           s.State.Extra().Waiting.Load(),
		Warning:           s.Warning(),
		TrafficCounters:   trafficCounters(s.State),
		ServiceOptions:    s.Options,
	}
	if ro := s.Rollout; ro != nil {
		v.Rollout = &RolloutSummary{CanaryImageID: ro.CanaryImageID, State: ro.State, Step: ro.Step, Steps: len(ro.Steps), Percent: ro.Percent}
	}
	_, v.RequestsPerSecond = recentOf(&s.State.Counters)
	if s.updated != 0 {
		u := s.Updated().Format(time.RFC3339Nano)
		v.LastUpdated = &u
	}
	if s.ExternalPort != 0 {
		p := s.ExternalPort
		v.ExternalPort = &p
	}
	for i, c := range s.Containers {
		v.Containers[i] = c.View(s.ImageID)
	}
	return v
}

// Latency is a set of latency quantiles in milliseconds; null when nothing
// has been measured yet.
type Latency struct {
	P50 *float64 `json:"p50"`
	P95 *float64 `json:"p95"`
	P99 *float64 `json:"p99"`
}

// recentOf returns the latency quantiles and the request rate of the last minute.
func recentOf(c *Counters) (Latency, float64) {
	q, perSecond, ok := c.Recent(0.50, 0.95, 0.99)
	if !ok {
		return Latency{}, 0
	}
	return Latency{P50: &q[0], P95: &q[1], P99: &q[2]}, math.Round(perSecond*1000) / 1000
}

// ContainerStatsView is a container's entry in the statistics.
type ContainerStatsView struct {
	ContainerID       string `json:"container_id"`
	Status            Status `json:"status"`
	TotalRequests     int64  `json:"total_requests"`
	FailedRequests    int64  `json:"failed_requests"`
	ActiveConnections int64  `json:"active_connections"`
	// RequestsPerSecond and LatencyMS cover the last minute.
	RequestsPerSecond float64 `json:"requests_per_second"`
	LatencyMS         Latency `json:"latency_ms"`
	// Ejected and Ejections report outlier ejection.
	Ejected   bool  `json:"ejected"`
	Ejections int64 `json:"ejections"`
	// BytesIn and BytesOut count the bodies of the requests whose last
	// attempt the container served.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
}

// ServiceStatsView is a service's entry in the statistics.
type ServiceStatsView struct {
	ImageID           int64     `json:"image_id"`
	ImageName         string    `json:"image_name"`
	Algorithm         Algorithm `json:"algorithm"`
	TotalRequests     int64     `json:"total_requests"`
	FailedRequests    int64     `json:"failed_requests"`
	ActiveConnections int64     `json:"active_connections"`
	HealthyContainers int       `json:"healthy_containers"`
	RequestsPerSecond float64   `json:"requests_per_second"`
	LatencyMS         Latency   `json:"latency_ms"`
	// Requests turned away before reaching a container: by the rate
	// limit (429) and by max_in_flight (503); and retries the retry
	// budget refused.
	RateLimitedRequests int64 `json:"rate_limited_requests"`
	ShedRequests        int64 `json:"shed_requests"`
	RetriesDenied       int64 `json:"retries_denied"`
	// BytesIn and BytesOut are the usage ledger's totals: request and
	// response body bytes (README, Usage).
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
	TrafficCounters
	Containers []ContainerStatsView `json:"containers"`
}

// StatsView is the whole statistics document.
type StatsView struct {
	UptimeSeconds     float64            `json:"uptime_seconds"`
	TotalRequests     int64              `json:"total_requests"`
	FailedRequests    int64              `json:"failed_requests"`
	ActiveConnections int64              `json:"active_connections"`
	RequestsPerSecond float64            `json:"requests_per_second"`
	Services          []ServiceStatsView `json:"services"`
}

// Stats returns the statistics of the given services (all when services is
// the registry's full list). Totals add up the services shown.
func (r *Registry) Stats(services []*Service) StatsView {
	v, entries := r.StatsParts(services)
	for i, s := range services {
		entries[i].Containers = s.ContainerStats()
	}
	v.Services = entries
	return v
}

// StatsParts returns the statistics of the given services in parts, for an
// answer written one service at a time: the document without its services
// (the totals, which add up the entries), and the services' entries without
// their containers, which ContainerStats makes for one service when it is
// written. Each counter is read once, so the totals add up the entries.
func (r *Registry) StatsParts(services []*Service) (StatsView, []ServiceStatsView) {
	v := StatsView{UptimeSeconds: r.Uptime().Seconds()}
	entries := make([]ServiceStatsView, len(services))
	for i, s := range services {
		base, total := s.State.Usage.Base(), s.State.Usage.Total()
		sv := ServiceStatsView{
			ImageID:             s.ImageID,
			ImageName:           s.ImageName,
			Algorithm:           s.Algorithm,
			TotalRequests:       s.State.Requests.Load() + base.Requests,
			FailedRequests:      s.State.Failures.Load() + base.FailedRequests,
			BytesIn:             total.BytesIn,
			BytesOut:            total.BytesOut,
			ActiveConnections:   s.State.InFlight.Load(),
			HealthyContainers:   s.HealthyCount(),
			RateLimitedRequests: s.State.Extra().RateLimited.Load(),
			ShedRequests:        s.State.Extra().Shed.Load(),
			RetriesDenied:       s.State.Extra().RetriesDenied.Load(),
			TrafficCounters:     trafficCounters(s.State),
		}
		sv.LatencyMS, sv.RequestsPerSecond = recentOf(&s.State.Counters)
		v.TotalRequests += sv.TotalRequests
		v.FailedRequests += sv.FailedRequests
		v.ActiveConnections += sv.ActiveConnections
		v.RequestsPerSecond += sv.RequestsPerSecond
		entries[i] = sv
	}
	return v, entries
}

// ContainerStats returns the statistics of the service's containers.
func (s *Service) ContainerStats() []ContainerStatsView {
	out := make([]ContainerStatsView, len(s.Containers))
	for i, c := range s.Containers {
		cv := ContainerStatsView{
			ContainerID:       c.ContainerID,
			Status:            c.Status,
			TotalRequests:     c.Stats.Requests.Load(),
			FailedRequests:    c.Stats.Failures.Load(),
			ActiveConnections: c.Stats.InFlight.Load(),
			Ejected:           c.Stats.Ejected(),
			Ejections:         c.Stats.Ejections(),
			BytesIn:           c.Stats.Traffic().BytesIn.Load(),
			BytesOut:          c.Stats.Traffic().BytesOut.Load(),
		}
		cv.LatencyMS, cv.RequestsPerSecond = recentOf(&c.Stats.Counters)
		out[i] = cv
	}
	return out
}

// Uptime is how long the registry has existed.
func (r *Registry) Uptime() time.Duration { return now().Sub(r.started) }

// Summary counts services and containers for the /health route.
type Summary struct {
	Services          int `json:"services"`
	Containers        int `json:"containers"`
	HealthyContainers int `json:"healthy_containers"`
}

// Summary counts what the registry holds.
func (r *Registry) Summary() Summary {
	var s Summary
	for _, shard := range r.snap.Load().shards {
		for _, svc := range shard {
			s.Services++
			s.Containers += len(svc.Containers)
			s.HealthyContainers += svc.HealthyCount()
		}
	}
	return s
}

// Each calls fn with every service of the current snapshot, in no
// particular order, without copying or sorting the index: what a scan of
// the whole registry (a metrics scrape) needs at 100,000 images.
func (r *Registry) Each(fn func(*Service)) {
	for _, shard := range r.snap.Load().shards {
		for _, svc := range shard {
			fn(svc)
		}
	}
}

// Walker returns a function that calls fn with every service of the
// snapshot current now, the same snapshot at every call, in no particular
// order: a reader that walks the registry several times (the metrics
// exposition, one metric family after another) sees one state of it.
func (r *Registry) Walker() func(fn func(*Service)) {
	s := r.snap.Load()
	return func(fn func(*Service)) {
		for _, shard := range s.shards {
			for _, svc := range shard {
				fn(svc)
			}
		}
	}
}
