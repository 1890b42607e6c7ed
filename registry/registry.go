package registry

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// numShards splits the service index so that adding or removing one service
// copies 1/numShards of it, keeping registration cheap at 100,000 images.
const numShards = 1024

// snapshot is an immutable view of the whole registry. Writers build a new
// one (copying only the shard they change) and publish it atomically; the
// request path reads the current one without locking.
type snapshot struct {
	shards  [numShards]map[int64]*Service
	ports   map[int]int64 // external port -> image_id
	count   int           // number of services
	total   int           // number of containers, of all services
	version uint64        // incremented by every change
	retired uint64        // dial addresses that changes took out of a service, so far
	touched int64         // the image the last replace changed

	// byStatus counts the containers of all services in each status, by
	// index in Statuses (page.go): the totals read it, not every container.
	byStatus [numStatuses]int
}

func (s *snapshot) lookup(id int64) *Service {
	return s.shards[uint64(id)%numShards][id]
}

// Options are the registry-wide defaults set from the app's configuration.
type Options struct {
	// DefaultAlgorithm applies to services registered without an algorithm.
	DefaultAlgorithm Algorithm
	// DefaultHost applies to containers registered without a host.
	DefaultHost string
	// PortLo and PortHi bound the range external ports are allocated from;
	// 0 means no allocation.
	PortLo, PortHi int
	// MaxContainers caps the containers of one service; 0 means no cap.
	MaxContainers int
	// MirrorBudget is the memory all mirror copies in flight may hold
	// together, in bytes (MirrorBudget); 0 means no limit.
	MirrorBudget int64
	// MaxServices and MaxTotalContainers cap the services and the
	// containers of all services together (limits.go); 0 means no cap.
	MaxServices, MaxTotalContainers int
	// Guard decides which hosts containers may have; nil refuses only
	// the link-local and metadata ranges.
	Guard *Guard
	// Sites are the ports this Caddy serves, which decide the ports
	// external_port may map (ports.go); nil: not known yet.
	Sites *SitePorts
}

// Registry is the image-keyed registry. Reads (Lookup, ByPort) are lock-free;
// writes are serialized and each publishes a new snapshot.
type Registry struct {
	snap    atomic.Pointer[snapshot]
	started time.Time

	mu    sync.Mutex // serializes writers; guards the fields below
	opts  Options
	store RecordStore // nil: memory only
	// head is the published snapshot plus the queued changes; writers
	// compute on it (commit.go).
	head       *snapshot
	queue      []*pending
	inflight   []*pending // the batch being committed
	committing bool
	cond       *sync.Cond // on mu: a commit finished
	// made holds, for each image whose version in head a change not yet
	// published made, that change (commit.go).
	made map[int64]*pending
	// revs is the store's revision of each image's record, and of the
	// removal of an image removed since the watch's revision (tombs): an
	// event at or below it is older than what this node has (remote.go).
	revs     map[int64]int64
	tombs    map[int64]struct{}
	revision int64 // the shared store's revision the watch delivered
	usage    map[int64]*UsageCounter

	mirrorBudget MirrorBudget // shared by every image's mirror copies

	ops       [numOps]atomic.Int64
	listeners listeners // told of every published change (notify.go)
}

// Op names a kind of acknowledged change, for the operation counters.
type Op int

// The acknowledged changes.
const (
	OpRegister Op = iota
	OpRemove
	OpPutContainer
	OpPatchContainer
	OpRemoveContainer
	numOps
)

var opNames = [numOps]string{"register", "remove", "put_container", "patch_container", "remove_container"}

func (o Op) String() string { return opNames[o] }

// Operations returns how many changes of each kind were applied.
func (r *Registry) Operations() map[Op]int64 {
	m := make(map[Op]int64, numOps)
	for op := range numOps {
		m[op] = r.ops[op].Load()
	}
	return m
}

// New returns an empty registry with the given options.
func New(opts Options) *Registry {
	r := &Registry{started: now(), revs: map[int64]int64{}, tombs: map[int64]struct{}{}, made: map[int64]*pending{},
		usage: map[int64]*UsageCounter{}}
	r.cond = sync.NewCond(&r.mu)
	r.opts = opts.withDefaults()
	r.mirrorBudget.SetLimit(opts.MirrorBudget)
	r.head = emptySnapshot()
	r.snap.Store(r.head)
	return r
}

func emptySnapshot() *snapshot {
	s := &snapshot{ports: map[int]int64{}}
	for i := range s.shards {
		s.shards[i] = map[int64]*Service{}
	}
	return s
}

func (o Options) withDefaults() Options {
	if o.DefaultAlgorithm == "" {
		o.DefaultAlgorithm = RoundRobin
	}
	if o.DefaultHost == "" {
		o.DefaultHost = "127.0.0.1"
	}
	return o
}

// SetOptions replaces the registry-wide defaults. Existing services keep the
// algorithm they were registered with. A service that is not static and
// whose external port the options' sites no longer allow (a record restored
// from the store, or a site added since) is left out of this node's
// registry, not of the store; leftOut says which and why. Static services
// are checked again by ApplyStatic.
func (r *Registry) SetOptions(opts Options) (leftOut []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opts = opts.withDefaults()
	r.mirrorBudget.SetLimit(opts.MirrorBudget)
	if r.opts.Sites == nil {
		return nil
	}
	ports := make([]int, 0, len(r.head.ports))
	for p := range r.head.ports {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	for _, p := range ports {
		msg := r.opts.CheckExternalPort(p)
		if msg == "" {
			continue
		}
		var id int64
		_ = r.applyNow(func(snap *snapshot) (*snapshot, error) {
			svc := snap.lookup(snap.ports[p])
			if svc == nil || svc.Static || svc.ExternalPort != p {
				return nil, nil
			}
			id = svc.ImageID
			return snap.replace(svc, nil), nil
		})
		if id != 0 {
			leftOut = append(leftOut, fmt.Sprintf("service %d: %s", id, msg))
		}
	}
	return leftOut
}

// MirrorBudget returns the budget every image's mirror copies share.
func (r *Registry) MirrorBudget() *MirrorBudget { return &r.mirrorBudget }

// Started returns when the registry was created.
func (r *Registry) Started() time.Time { return r.started }

// Lookup returns the current version of the service, or nil.
func (r *Registry) Lookup(imageID int64) *Service {
	return r.snap.Load().lookup(imageID)
}

// Get returns the current version of the service, or a not-found error.
func (r *Registry) Get(imageID int64) (*Service, error) {
	if svc := r.Lookup(imageID); svc != nil {
		return svc, nil
	}
	return nil, unknownImage(imageID)
}

// ByPort returns the service mapped to an external port, or nil.
func (r *Registry) ByPort(port int) *Service {
	s := r.snap.Load()
	id, ok := s.ports[port]
	if !ok {
		return nil
	}
	return s.lookup(id)
}

// Services returns every service sorted by image_id.
func (r *Registry) Services() []*Service {
	s := r.snap.Load()
	out := make([]*Service, 0, s.count)
	for _, shard := range s.shards {
		for _, svc := range shard {
			out = append(out, svc)
		}
	}
	slices.SortFunc(out, func(a, b *Service) int { return cmpInt64(a.ImageID, b.ImageID) })
	return out
}

// PortMapping is one external port mapped to an image, with the image's
// container count and requests (the original service's fields).
type PortMapping struct {
	ExternalPort   int    `json:"external_port"`
	ImageID        int64  `json:"image_id"`
	ImageName      string `json:"image_name"`
	ContainerCount int    `json:"container_count"`
	TotalRequests  int64  `json:"total_requests"`
}

// PortMappings returns the mapped external ports sorted by port.
func (r *Registry) PortMappings() []PortMapping {
	s := r.snap.Load()
	out := make([]PortMapping, 0, len(s.ports))
	for port, id := range s.ports {
		m := PortMapping{ExternalPort: port, ImageID: id}
		if svc := s.lookup(id); svc != nil {
			m.ImageName, m.ContainerCount, m.TotalRequests = svc.ImageName, len(svc.Containers), svc.State.Requests.Load()
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b PortMapping) int { return a.ExternalPort - b.ExternalPort })
	return out
}

// update applies change: a durable one (wait, with a store) is committed,
// then published (commit.go); any other is published at once. change
// returns the next snapshot (nil: nothing changed).
func (r *Registry) update(wait bool, change func(snap *snapshot) (*snapshot, error)) error {
	r.mu.Lock()
	if wait && r.store != nil {
		r.mu.Unlock()
		return r.durable(change)
	}
	defer r.mu.Unlock()
	return r.applyNow(change)
}

// Register creates the service or replaces its container set atomically.
// Containers that stay (same container_id) keep their counters; containers
// that leave finish the requests they have in flight.
func (r *Registry) Register(spec ServiceSpec) (svc *Service, err error) {
	if err := r.checkHosts(spec.Containers...); err != nil {
		return nil, err
	}
	err = r.update(true, func(snap *snapshot) (next *snapshot, err error) {
		if fe := checkReferences(snap, &spec, []any{"body"}); len(fe) > 0 {
			return nil, fe.err() // the images a split or mirror names, as they are now
		}
		spec := spec // the change may be made again (commit.go): the caller's spec stays as it was
		if err := carryRollout(snap.lookup(spec.ImageID), &spec); err != nil {
			return nil, err
		}
		if next, svc, err = r.register(snap, spec); err != nil {
			return nil, err
		}
		return next, r.checkQuotas(snap, next)
	})
	r.count(OpRegister, err == nil)
	return svc, err
}

// register returns snap with spec registered, and the new service version.
func (r *Registry) register(snap *snapshot, spec ServiceSpec) (*snapshot, *Service, error) {
	if err := r.checkSpec(&spec); err != nil {
		return nil, nil, err
	}
	old := snap.lookup(spec.ImageID)

	port, err := r.choosePort(snap, spec, old)
	if err != nil {
		return nil, nil, err
	}
	spec.ExternalPort = port

	state := r.newState(spec.ImageID)
	if old != nil {
		state = old.State
	}
	containers := make([]*Container, len(spec.Containers))
	for i, cs := range spec.Containers {
		var stats *ContainerStats
		var prev *Container
		if old != nil {
			if prev = old.Container(cs.ContainerID); prev != nil {
				stats = prev.Stats
				if prev.Status != cs.Status {
					stats.ResetChecks() // a new status: health streaks start afresh
				}
			}
		}
		containers[i] = newContainer(cs, stats)
		if prev != nil {
			markHealthy(containers[i], prev.Status, true)
		} else {
			markHealthy(containers[i], "", false)
		}
	}
	svc := newService(spec, containers, state)
	return snap.replace(old, svc), svc, nil
}

// checkSpec fills defaults and enforces registry-wide limits.
func (r *Registry) checkSpec(spec *ServiceSpec) error {
	if spec.ImageID <= 0 {
		return invalid("image_id must be a positive integer, got %d", spec.ImageID)
	}
	if spec.ImageName == "" {
		return invalid("image_name is required")
	}
	// The name may be a piece of a larger string (the request line it came
	// in as a query parameter): kept as is, it would keep all of it.
	spec.ImageName = strings.Clone(spec.ImageName)
	if spec.Algorithm == "" {
		spec.Algorithm = r.opts.DefaultAlgorithm
	}
	if err := spec.Options.Normalize(spec.Algorithm); err != nil {
		return err
	}
	if r.opts.MaxContainers > 0 && len(spec.Containers) > r.opts.MaxContainers {
		return invalid("a service may have at most %d containers, got %d", r.opts.MaxContainers, len(spec.Containers))
	}
	// The containers slice is the caller's: fill defaults in a copy.
	spec.Containers = slices.Clone(spec.Containers)
	for i := range spec.Containers {
		if spec.Containers[i].Host == "" {
			spec.Containers[i].Host = r.opts.DefaultHost
		}
	}
	return nil
}

// choosePort returns the external port the service gets: the requested one
// (409 if another image has it), else the one it already has, else the lowest
// free port of the configured range, else none.
func (r *Registry) choosePort(snap *snapshot, spec ServiceSpec, old *Service) (int, error) {
	if spec.ExternalPort != 0 {
		if msg := r.opts.CheckExternalPort(spec.ExternalPort); msg != "" {
			return 0, invalid("%s", msg)
		}
		if owner, taken := snap.ports[spec.ExternalPort]; taken && owner != spec.ImageID {
			return 0, conflict("external port %d is already mapped to image %d", spec.ExternalPort, owner)
		}
		return spec.ExternalPort, nil
	}
	if old != nil && old.ExternalPort != 0 {
		return old.ExternalPort, nil
	}
	if r.opts.PortLo == 0 {
		return 0, nil
	}
	for p := r.opts.PortLo; p <= r.opts.PortHi; p++ {
		if _, taken := snap.ports[p]; !taken && r.opts.CheckExternalPort(p) == "" {
			return p, nil
		}
	}
	return 0, conflict("no free external port left in port_range %d-%d", r.opts.PortLo, r.opts.PortHi)
}

// replace returns a new snapshot in which old (may be nil) is replaced by svc
// (may be nil, meaning removal). snap itself is not modified.
func (snap *snapshot) replace(old, svc *Service) *snapshot {
	next := *snap
	id := int64(0)
	if svc != nil {
		id = svc.ImageID
	} else {
		id = old.ImageID
	}
	i := uint64(id) % numShards
	shard := make(map[int64]*Service, len(snap.shards[i])+1)
	for k, v := range snap.shards[i] {
		shard[k] = v
	}
	if svc == nil {
		delete(shard, id)
		next.count--
	} else {
		if old == nil {
			next.count++
		}
		shard[id] = svc
		next.total += len(svc.Containers)
		next.countStatuses(svc, 1)
	}
	if old != nil {
		next.total -= len(old.Containers)
		next.countStatuses(old, -1)
	}
	next.shards[i] = shard
	next.touched = id
	next.retired += retiredAddrs(old, svc)

	oldPort, newPort := 0, 0
	if old != nil {
		oldPort = old.ExternalPort
	}
	if svc != nil {
		newPort = svc.ExternalPort
	}
	if oldPort != newPort {
		ports := make(map[int]int64, len(snap.ports)+1)
		for k, v := range snap.ports {
			ports[k] = v
		}
		// only the port this image holds: a re-list may already have given
		// it to another image before it removes this one
		if oldPort != 0 && ports[oldPort] == id {
			delete(ports, oldPort)
		}
		if newPort != 0 {
			ports[newPort] = id
		}
		next.ports = ports
	}
	return &next
}

// retiredAddrs counts the dial addresses of old (may be nil) that svc (may
// be nil) no longer has.
func retiredAddrs(old, svc *Service) uint64 {
	if old == nil {
		return 0
	}
	var n uint64
	var kept map[string]struct{}
	for i, c := range old.Containers {
		if svc == nil {
			n++
			continue
		}
		if i < len(svc.Containers) && svc.Containers[i].dial == c.dial {
			continue // the common case: same containers in the same order
		}
		if kept == nil {
			kept = make(map[string]struct{}, len(svc.Containers))
			for _, k := range svc.Containers {
				kept[k.DialAddr()] = struct{}{}
			}
		}
		if _, ok := kept[c.DialAddr()]; !ok {
			n++
		}
	}
	return n
}

// RetiredAddresses counts the dial addresses that changes took out of a
// service since the registry was created (an address another service still
// uses counts too). It only grows. Connection pools read it to know when to
// let go of what they keep for addresses no longer in use.
func (r *Registry) RetiredAddresses() uint64 { return r.snap.Load().retired }

// Remove deletes a service and returns its last version.
func (r *Registry) Remove(imageID int64) (old *Service, err error) {
	err = r.update(true, func(snap *snapshot) (*snapshot, error) {
		if old = snap.lookup(imageID); old == nil {
			return nil, unknownImage(imageID)
		}
		return snap.replace(old, nil), nil
	})
	r.count(OpRemove, err == nil)
	return old, err
}

// PutContainer adds or replaces one container of a service.
func (r *Registry) PutContainer(imageID int64, spec ContainerSpec) (c *Container, err error) {
	if err := r.checkHosts(spec); err != nil {
		return nil, err
	}
	err = r.update(true, func(snap *snapshot) (*snapshot, error) {
		old := snap.lookup(imageID)
		if old == nil {
			return nil, unknownImage(imageID)
		}
		if spec.Host == "" {
			spec.Host = r.opts.DefaultHost
		}
		cs := slices.Clone(old.Containers)
		var stats *ContainerStats
		i := slices.IndexFunc(cs, func(c *Container) bool { return c.ContainerID == spec.ContainerID })
		if i >= 0 {
			stats = cs[i].Stats
		} else if r.opts.MaxContainers > 0 && len(cs) >= r.opts.MaxContainers {
			return nil, invalid("service %d already has the maximum of %d containers", imageID, r.opts.MaxContainers)
		}
		c = newContainer(spec, stats)
		if i >= 0 {
			markHealthy(c, cs[i].Status, true)
			cs[i] = c
		} else {
			markHealthy(c, "", false)
			cs = append(cs, c)
		}
		next := snap.replace(old, old.withContainers(cs))
		return next, r.checkQuotas(snap, next)
	})
	r.count(OpPutContainer, err == nil)
	return c, err
}

// checkHosts applies the upstream guard to the containers' hosts (the
// default host for those without one). It runs outside the writers' lock:
// checking a hostname may mean a DNS lookup.
func (r *Registry) checkHosts(cs ...ContainerSpec) error {
	r.mu.Lock()
	guard, defaultHost := r.opts.Guard, r.opts.DefaultHost
	r.mu.Unlock()
	var hosts []string
	ports := map[string][]int{}
	for _, c := range cs {
		host := c.Host
		if host == "" {
			host = defaultHost
		}
		if _, seen := ports[host]; !seen {
			hosts = append(hosts, host)
		}
		ports[host] = append(ports[host], c.Port)
	}
	for _, host := range hosts {
		if err := guard.Check(host, ports[host]...); err != nil {
			return err
		}
	}
	return nil
}

// count counts an applied change.
func (r *Registry) count(op Op, applied bool) {
	if applied {
		r.ops[op].Add(1)
	}
}

// PatchContainer changes the status and/or weight of one container. A
// status set by the orchestrator starts the health-check streaks afresh, so
// thresholds count only checks made after it.
func (r *Registry) PatchContainer(imageID int64, containerID string, p ContainerPatch) (*Container, error) {
	c, err := r.patch(false, p.Status != nil, imageID, containerID, func(c *ContainerSpec) bool {
		if p.Status != nil {
			c.Status = *p.Status
		}
		if p.Weight != nil {
			c.Weight = *p.Weight
		}
		for i, u := range [3]**float64{&c.CPUUsage, &c.MemoryUsage, &c.DiskUsage} {
			if p.Usage[i] != nil {
				*u = *p.Usage[i]
			}
		}
		return true
	})
	r.count(OpPatchContainer, err == nil)
	if c != nil && p.Status != nil {
		c.Stats.ResetChecks() // the orchestrator's word starts the judgement afresh
	}
	return c, err
}

// CompareAndSwapStatus sets a container's status to to if it is from, and
// reports whether it changed. Health checks use it so that every change is
// applied, logged and announced exactly once. It does not wait for the
// store: health is re-checked after a restart anyway.
func (r *Registry) CompareAndSwapStatus(imageID int64, containerID string, from, to Status) bool {
	changed := false
	_, _ = r.patch(true, false, imageID, containerID, func(c *ContainerSpec) bool {
		if c.Status != from || from == to {
			return false
		}
		c.Status, changed = to, true
		return true
	})
	return changed
}

// patch applies change to a copy of one container and publishes it; change
// returns false to leave everything as it is. A verdict (this node's health
// check) is not stored; anything else is the orchestrator's word, committed
// before it is published. Only push (a status in the orchestrator's patch)
// changes the pushed status.
func (r *Registry) patch(verdict, push bool, imageID int64, containerID string, change func(*ContainerSpec) bool) (c *Container, err error) {
	err = r.update(!verdict, func(snap *snapshot) (*snapshot, error) {
		old, i, err := snap.findContainer(imageID, containerID)
		if err != nil {
			return nil, err
		}
		spec := old.Containers[i].ContainerSpec
		if !change(&spec) {
			c = old.Containers[i]
			return nil, nil
		}
		cs := slices.Clone(old.Containers)
		if spec.Status != cs[i].Status {
			cs[i].Stats.ResetChecks()
		}
		prev, pushed := cs[i].Status, cs[i].pushed
		cs[i] = newContainer(spec, cs[i].Stats)
		if !push {
			cs[i].pushed = pushed
		}
		c = cs[i]
		markHealthy(c, prev, true)
		svc := old.withContainers(cs)
		if verdict {
			svc.updated = old.updated // a verdict is not a change to what is registered
		}
		return snap.replace(old, svc), nil
	})
	return c, err
}

// findContainer returns the service and the index of one of its containers.
func (snap *snapshot) findContainer(imageID int64, containerID string) (*Service, int, error) {
	svc := snap.lookup(imageID)
	if svc == nil {
		return nil, 0, unknownImage(imageID)
	}
	i := slices.IndexFunc(svc.Containers, func(c *Container) bool { return c.ContainerID == containerID })
	if i < 0 {
		return nil, 0, unknownContainer(imageID, containerID)
	}
	return svc, i, nil
}

// RemoveContainer deletes one container of a service and returns it.
func (r *Registry) RemoveContainer(imageID int64, containerID string) (removed *Container, err error) {
	err = r.update(true, func(snap *snapshot) (*snapshot, error) {
		old, i, err := snap.findContainer(imageID, containerID)
		if err != nil {
			return nil, err
		}
		removed = old.Containers[i]
		cs := slices.Delete(slices.Clone(old.Containers), i, i+1)
		return snap.replace(old, old.withContainers(cs)), nil
	})
	r.count(OpRemoveContainer, err == nil)
	return removed, err
}

// ApplyStatic makes the statically configured services match specs: each is
// registered (replacing its containers), and a service that came from an
// earlier configuration but is no longer in specs is removed. Services
// registered through the API are left alone. It applies all or nothing, and
// readers see either the registry before or the one after, nothing between.
// It does not wait for the store: the configuration is applied again at start.
func (r *Registry) ApplyStatic(specs []ServiceSpec) error {
	for _, spec := range specs {
		if err := r.checkHosts(spec.Containers...); err != nil {
			return fmt.Errorf("static service %d: %w", spec.ImageID, err)
		}
	}
	var ids []int64 // what the change touched, for the listeners
	err := r.update(false, func(before *snapshot) (*snapshot, error) {
		next := before
		ids = ids[:0]
		keep := make(map[int64]bool, len(specs))
		for _, spec := range specs {
			spec.Static = true
			if old := next.lookup(spec.ImageID); old != nil && !old.Static {
				continue // taken over through the API; the API's registration wins
			}
			var err error
			if next, _, err = r.register(next, spec); err != nil {
				return nil, fmt.Errorf("static service %d: %w", spec.ImageID, err)
			}
			keep[spec.ImageID] = true
			ids = append(ids, spec.ImageID)
		}
		for _, spec := range specs { // once all are in: static services may name each other
			if keep[spec.ImageID] {
				if fe := checkReferences(next, &spec, nil); len(fe) > 0 {
					return nil, fmt.Errorf("static service %d: %w", spec.ImageID, FieldErrors(fe))
				}
			}
		}
		for _, shard := range before.shards {
			for id, svc := range shard {
				if svc.Static && !keep[id] {
					next = next.replace(next.lookup(id), nil)
					ids = append(ids, id)
				}
			}
		}
		if err := r.checkQuotas(before, next); err != nil {
			return nil, fmt.Errorf("static services: %w", err)
		}
		return next, nil
	})
	if err == nil {
		r.mu.Lock()
		r.changed(ids)
		r.mu.Unlock()
	}
	return err
}

func unknownImage(id int64) *Error {
	e := notFound("image_id %d is not registered", id)
	e.missing = id
	return e
}

func unknownContainer(imageID int64, containerID string) *Error {
	e := notFound("container %q is not registered for image_id %d", containerID, imageID)
	e.missing = imageID
	return e
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
