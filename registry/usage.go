package registry

import (
	"sync/atomic"
	"time"
)

// Usage is what an image consumed: the figures billing charges by.
type Usage struct {
	Requests       int64 `json:"requests"`
	FailedRequests int64 `json:"failed_requests"`
	// BytesIn counts request body bytes from clients, BytesOut response
	// body bytes to clients (streamed and upgraded traffic included).
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
	// RequestNanos is the sum of the requests' durations, in nanoseconds.
	RequestNanos int64 `json:"request_nanos"`
}

// Add returns u plus v.
func (u Usage) Add(v Usage) Usage {
	return Usage{Requests: u.Requests + v.Requests, FailedRequests: u.FailedRequests + v.FailedRequests,
		BytesIn: u.BytesIn + v.BytesIn, BytesOut: u.BytesOut + v.BytesOut, RequestNanos: u.RequestNanos + v.RequestNanos}
}

// Sub returns u minus v.
func (u Usage) Sub(v Usage) Usage {
	return Usage{Requests: u.Requests - v.Requests, FailedRequests: u.FailedRequests - v.FailedRequests,
		BytesIn: u.BytesIn - v.BytesIn, BytesOut: u.BytesOut - v.BytesOut, RequestNanos: u.RequestNanos - v.RequestNanos}
}

// IsZero reports whether nothing was used.
func (u Usage) IsZero() bool { return u == Usage{} }

// UsageCounter counts one image's usage on the request path: atomics, no
// lock, no allocation. There is one per image_id for the life of the
// process, whatever happens to the service (re-registered, removed and
// registered again), so nothing counted is lost with a service version.
type UsageCounter struct {
	requests, failed, bytesIn, bytesOut, nanos atomic.Int64
	// base is what was stored for the image at start (this node's
	// totals): the totals go on from it.
	base atomic.Pointer[Usage]
}

// AddIn counts request body bytes read from a client.
func (u *UsageCounter) AddIn(n int) { u.bytesIn.Add(int64(n)) }

// AddOut counts response body bytes written to a client.
func (u *UsageCounter) AddOut(n int) { u.bytesOut.Add(int64(n)) }

// finish counts one finished request.
func (u *UsageCounter) finish(failed bool, d time.Duration) {
	u.requests.Add(1)
	if failed {
		u.failed.Add(1)
	}
	u.nanos.Add(int64(d))
}

// Counted returns what was counted since the process started.
func (u *UsageCounter) Counted() Usage {
	return Usage{Requests: u.requests.Load(), FailedRequests: u.failed.Load(), BytesIn: u.bytesIn.Load(),
		BytesOut: u.bytesOut.Load(), RequestNanos: u.nanos.Load()}
}

// Base returns the stored totals the image started from (nil: none).
func (u *UsageCounter) Base() Usage {
	if u == nil {
		return Usage{}
	}
	if b := u.base.Load(); b != nil {
		return *b
	}
	return Usage{}
}

// Total returns the image's totals: the stored ones plus what was counted
// since.
func (u *UsageCounter) Total() Usage {
	if u == nil {
		return Usage{}
	}
	return u.Base().Add(u.Counted())
}

// usageCounter returns the image's counter, creating it (r.mu held).
func (r *Registry) usageCounter(id int64) *UsageCounter {
	if u := r.usage[id]; u != nil {
		return u
	}
	u := new(UsageCounter)
	r.usage[id] = u
	return u
}

// newState returns the runtime state of a new service of the image (r.mu
// held).
func (r *Registry) newState(id int64) *ServiceState {
	return &ServiceState{Usage: r.usageCounter(id), reg: r}
}

// UsageCounters returns the counter of every image that was registered in
// this process or has stored totals, by image_id.
func (r *Registry) UsageCounters() map[int64]*UsageCounter {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[int64]*UsageCounter, len(r.usage))
	for id, u := range r.usage {
		out[id] = u
	}
	return out
}

// SetUsageBase sets the stored totals the images' counters go on from (at
// start, before traffic).
func (r *Registry) SetUsageBase(totals map[int64]Usage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, t := range totals {
		r.usageCounter(id).base.Store(&t)
	}
}

// Finish finishes a request of the service started with Begin: its
// counters and its image's usage.
func (s *ServiceState) Finish(status int, failed bool, d time.Duration) {
	s.Counters.Finish(status, failed, d)
	if s.Usage != nil {
		s.Usage.finish(failed, d)
	}
}

// Refuse counts a request answered at once (429, 503), usage included.
func (s *ServiceState) Refuse(status int, failed bool) {
	s.Counters.Refuse(status, failed)
	if s.Usage != nil {
		s.Usage.finish(failed, 0)
	}
}

// CountedTotal returns what every image's counter counted since the process
// started, removed images included: it never decreases, so it can be a
// Prometheus counter of the whole registry.
func (r *Registry) CountedTotal() Usage {
	r.mu.Lock()
	defer r.mu.Unlock()
	var t Usage
	for _, u := range r.usage {
		t = t.Add(u.Counted())
	}
	return t
}
