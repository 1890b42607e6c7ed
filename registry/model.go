// Package registry holds the image-keyed service registry of imagelb: the data
// model, validation of what the orchestrator sends, copy-on-write snapshots read
// by the request path, the balancing algorithms and the request counters.
//
// It imports nothing from Caddy and nothing from net/http, so it can be tested
// and benchmarked on its own and reused by every mount of the API.
//
// Files: model.go the data model; check.go the rules input obeys; validate.go
// and options.go decoding the API's bodies and the service options;
// registry.go the registry and its changes; commit.go commit, then
// publish (group commit); records.go the per-image store seam, remote.go
// applying what other nodes committed; store.go the stored records,
// boltstore.go the local database, filestore.go the JSON state file of
// earlier versions (imported once); usage.go and ledger.go the usage
// counters and the usage ledger; guard.go allowed upstreams; view.go the JSON views; stats.go
// counters and histograms; page.go paged lists (filters, orders, the
// cursor, registry-wide totals); errors.go errors. Balancing: strategy.go the
// table of algorithms and the strategy interface, one file per algorithm
// (rr.go, wrr.go, leastconn.go, random.go, p2c.go, hash.go, leastlatency.go),
// balance.go a pick and the filter every strategy shares (zones, tried
// containers, ejection, slow start); outlier.go outlier ejection; limits.go
// max_in_flight, the retry budget and rate limits; split.go split and
// mirror; rollout.go canary rollouts and the counts they are judged on.
package registry

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Status is the status of a container.
type Status string

// Container statuses. Only StatusHealthy receives new requests.
const (
	StatusHealthy   Status = "healthy"
	StatusUnhealthy Status = "unhealthy"
	StatusStarting  Status = "starting"
	StatusDraining  Status = "draining"
	// StatusUnknown is the original service's default: not checked yet.
	// Like starting, it gets no traffic until a health check passes.
	StatusUnknown Status = "unknown"
)

// Statuses is the one list of container statuses: parsing, the messages
// that name them and the counts by status read it.
var Statuses = []Status{StatusHealthy, StatusUnhealthy, StatusStarting, StatusDraining, StatusUnknown}

// StatusNames lists the statuses for messages: "healthy, unhealthy, …
// or unknown".
var StatusNames = func() string {
	names := make([]string, len(Statuses))
	for i, s := range Statuses {
		names[i] = string(s)
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}()

// statusCode is a Status in a byte, where a container version keeps a
// second one (the status pushed).
type statusCode uint8

// statuses are the statuses by code (the zero code is unknown); Statuses
// above is the order for people.
var statuses = [...]Status{StatusUnknown, StatusHealthy, StatusUnhealthy, StatusStarting, StatusDraining}

func codeOf(s Status) statusCode {
	for i, x := range statuses {
		if x == s {
			return statusCode(i)
		}
	}
	return 0
}

// Status returns the status of the code.
func (c statusCode) Status() Status { return statuses[c] }

// ParseStatus validates a status name.
func ParseStatus(name string) (Status, bool) {
	if s := Status(name); slices.Contains(Statuses, s) {
		return s, true
	}
	return "", false
}

// Limits of the data model.
const (
	MaxIDLength   = 255
	MaxNameLength = 255
	MaxHostLength = 253
	MaxWeight     = 1000
	DefaultWeight = 1
)

// ContainerSpec is the desired state of one container, as validated input.
type ContainerSpec struct {
	ContainerID string
	Name        string
	Host        string
	Port        int
	Status      Status
	Weight      int
	// Zone is the locality the container runs in; "" for none.
	Zone string
	// CPUUsage, MemoryUsage and DiskUsage are what the orchestrator last
	// pushed (the original service's fields); nil when never set. imagelb
	// only stores and shows them.
	CPUUsage, MemoryUsage, DiskUsage *float64
}

// Dial returns the network address of the container.
func (c ContainerSpec) Dial() string {
	return net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
}

// ServiceSpec is the desired state of one service, as validated input.
type ServiceSpec struct {
	ImageID      int64
	ImageName    string
	Algorithm    Algorithm // empty: the registry's default
	ExternalPort int       // 0: none requested
	Options      ServiceOptions
	Containers   []ContainerSpec
	// Static marks a service declared in the configuration rather than
	// registered through the API.
	Static bool
	// Updated is when the service last changed; zero means now (it is set
	// only when a stored service is restored).
	Updated time.Time
	// Rollout is the image's canary rollout (rollout.go), nil when none;
	// a registration keeps the one the image has.
	Rollout *Rollout
}

// ContainerPatch is a partial update of one container.
type ContainerPatch struct {
	Status *Status
	Weight *int
	// Usage sets CPUUsage, MemoryUsage and DiskUsage; a nil entry leaves
	// one as it is, a set entry whose value is nil clears it.
	Usage [3]**float64
}

// Container is one immutable version of a container. Its counters live in
// Stats, which is shared by every version of the same container_id so that a
// re-registration keeps them.
type Container struct {
	// ContainerSpec.Status is the effective status: this node's health
	// verdict when it has one since the orchestrator's last push, else
	// the pushed status.
	ContainerSpec
	pushed statusCode // the status the orchestrator pushed: what is stored and shared
	dial   string     // the "host:port" network address; Host is its own bytes (newContainer)
	key    uint64     // hash of the container_id, for rendezvous hashing
	Stats  *ContainerStats
}

// DialAddr returns the container's "host:port" network address.
func (c *Container) DialAddr() string { return c.dial }

// DialValue is DialAddr as an interface value, for code that takes an any
// per request (Caddy's replacer): a pointer, so making it allocates
// nothing, whose String is the address (caddy.ToString calls it). A string
// boxed once per version did the same for 16 more bytes per container.
func (c *Container) DialValue() any { return (*dialValue)(c) }

// dialValue is a container seen as its network address.
type dialValue Container

// String returns the container's "host:port" network address.
func (d *dialValue) String() string { return d.dial }

// Available reports whether the container may receive new requests.
func (c *Container) Available() bool {
	return c.Status == StatusHealthy && c.Weight > 0
}

// Service is one immutable version of a service. Every change to a service
// produces a new version; the request path reads versions without locking.
type Service struct {
	ImageID      int64
	ImageName    string
	Algorithm    Algorithm
	ExternalPort int
	Static       bool
	learns       bool  // the strategy learns from outcomes (an observer)
	updated      int64 // unix nanoseconds of when this version was made: the last change to the service (Updated)
	Options      ServiceOptions
	Containers   []*Container // in registration order
	available    []*Container // the containers that may take new requests
	strategy     strategy     // the algorithm, built once per version (strategy.go)
	splitWeights *[]int64     // the split's shares in the rotation's units (split.go); nil: none
	// Rollout is the image's canary rollout (rollout.go); nil: none. It
	// drives Options.Split while it is active.
	Rollout *Rollout
	State   *ServiceState
}

// Updated is when this version was made: the last change to the service.
func (s *Service) Updated() time.Time {
	if s.updated == 0 {
		return time.Time{}
	}
	return time.Unix(0, s.updated).UTC()
}

// Available returns the containers that may take new requests, in
// registration order. The slice must not be modified.
func (s *Service) Available() []*Container { return s.available }

// Container returns the container with the given id, or nil.
func (s *Service) Container(id string) *Container {
	for _, c := range s.Containers {
		if c.ContainerID == id {
			return c
		}
	}
	return nil
}

// HealthyCount is the number of containers with status healthy.
func (s *Service) HealthyCount() int {
	n := 0
	for _, c := range s.Containers {
		if c.Status == StatusHealthy {
			n++
		}
	}
	return n
}

// newService builds a version from its parts, computing derived fields.
func newService(spec ServiceSpec, containers []*Container, state *ServiceState) *Service {
	s := &Service{
		ImageID:      spec.ImageID,
		ImageName:    spec.ImageName,
		Algorithm:    spec.Algorithm,
		ExternalPort: spec.ExternalPort,
		Static:       spec.Static,
		Options:      spec.Options,
		Containers:   containers,
		Rollout:      spec.Rollout,
		State:        state,
	}
	if spec.Updated.IsZero() {
		s.updated = now().UnixNano()
	} else {
		s.updated = spec.Updated.UnixNano()
	}
	n := 0
	for _, c := range containers {
		if c.Available() {
			n++
		}
	}
	switch {
	case n > 0 && n == len(containers):
		s.available = containers // the common case: one slice for both; neither is ever modified
	case n > 0:
		s.available = make([]*Container, 0, n)
		for _, c := range containers {
			if c.Available() {
				s.available = append(s.available, c)
			}
		}
	}
	for _, c := range containers {
		if spec.Options.Outlier == nil && c.Stats.Ejected() {
			c.Stats.circuit.Load().state.Store(circuitClosed) // ejection was turned off
		}
	}
	s.strategy = newStrategy(s)
	_, s.learns = s.strategy.(observer)
	if w := splitWeights(spec.Options.Split); w != nil {
		s.splitWeights = &w
	}
	return s
}

func (s *Service) spec() ServiceSpec {
	return ServiceSpec{ImageID: s.ImageID, ImageName: s.ImageName, Algorithm: s.Algorithm,
		ExternalPort: s.ExternalPort, Static: s.Static, Options: s.Options, Rollout: s.Rollout}
}

// withContainers returns a new version of s with the given containers.
func (s *Service) withContainers(cs []*Container) *Service {
	return newService(s.spec(), cs, s.State)
}

func newContainer(spec ContainerSpec, stats *ContainerStats) *Container {
	if stats == nil {
		stats = new(ContainerStats)
	}
	dial := spec.Dial()
	// The host is the address's own bytes: one string for both, not
	// another copy per container of the host the registration decoded.
	if i := strings.Index(dial, spec.Host); spec.Host != "" && i >= 0 {
		spec.Host = dial[i : i+len(spec.Host)]
	}
	return &Container{ContainerSpec: spec, pushed: codeOf(spec.Status), dial: dial, key: hashString(spec.ContainerID), Stats: stats}
}

// now is the registry's clock: every reading of the time in the package
// goes through it, so that tests can replace it.
var now = time.Now
