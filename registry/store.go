package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Store keeps the registry's state durably. It is the one seam between the
// registry and where its state lives: the local file store below today, a
// distributed store (etcd) later, without touching the request path.
type Store interface {
	// Load returns the last committed state, or nil when nothing was ever
	// committed. A state that cannot be read back is a *CorruptStateError.
	Load() (*State, error)
	// Commit durably replaces the stored state: when it returns nil the
	// state survives a crash; when it fails the previous state is intact.
	Commit(*State) error
	// Describe names where the state lives, for messages to the user.
	Describe() string
}

// StateFormat is the version of the state's encoding.
const StateFormat = 1

// State is the durable part of the registry: what the orchestrator
// registered and the statuses and weights it pushed. Counters and health
// check history are runtime state and are not stored.
type State struct {
	Format   int             `json:"format"`
	Version  uint64          `json:"version"`
	SavedAt  time.Time       `json:"saved_at"`
	Services []ServiceRecord `json:"services"`
	// Checksum is the SHA-256 of the JSON encoding of Services, so that a
	// file damaged in a way that still parses is caught too.
	Checksum string `json:"checksum"`
}

// ServiceRecord is a stored service.
type ServiceRecord struct {
	ImageID      int64             `json:"image_id"`
	ImageName    string            `json:"image_name"`
	Algorithm    Algorithm         `json:"algorithm"`
	ExternalPort int               `json:"external_port,omitempty"`
	Static       bool              `json:"static,omitempty"`
	Updated      time.Time         `json:"last_updated,omitzero"`
	Containers   []ContainerRecord `json:"containers"`
	ServiceOptions
	// Revision is the store's revision of the record's last change (a
	// shared store's mod_revision); it is not part of the record.
	Revision int64 `json:"-"`
}

// ContainerRecord is a stored container.
type ContainerRecord struct {
	ContainerID string   `json:"container_id"`
	Name        string   `json:"name,omitempty"`
	Host        string   `json:"host"`
	Port        int      `json:"port"`
	Status      Status   `json:"status"`
	Weight      int      `json:"weight"`
	Zone        string   `json:"zone,omitempty"`
	CPUUsage    *float64 `json:"cpu_usage,omitempty"`
	MemoryUsage *float64 `json:"memory_usage,omitempty"`
	DiskUsage   *float64 `json:"disk_usage,omitempty"`
}

// CorruptStateError reports stored state that cannot be read back.
type CorruptStateError struct {
	Where string
	Err   error
}

func (e *CorruptStateError) Error() string {
	return fmt.Sprintf("registry state in %s is corrupt: %v", e.Where, e.Err)
}

func (e *CorruptStateError) Unwrap() error { return e.Err }

// EncodeState returns the stored form of a state, with its checksum set.
func EncodeState(st *State) ([]byte, error) {
	services, err := json.Marshal(st.Services)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(services)
	st.Format, st.Checksum = StateFormat, hex.EncodeToString(sum[:])
	return json.MarshalIndent(st, "", "\t")
}

// DecodeState parses the stored form of a state and verifies it.
func DecodeState(data []byte) (*State, error) {
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("decoding: %v", err)
	}
	if st.Format != StateFormat {
		return nil, fmt.Errorf("unknown format %d (this build reads format %d)", st.Format, StateFormat)
	}
	services, err := json.Marshal(st.Services)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(services)
	if hex.EncodeToString(sum[:]) != st.Checksum {
		return nil, errors.New("checksum mismatch: the file was changed or damaged after it was written")
	}
	return &st, nil
}

// state returns the durable part of a snapshot.
func (s *snapshot) state() *State {
	st := &State{Version: s.version, SavedAt: now().UTC(), Services: make([]ServiceRecord, 0, s.count)}
	for _, shard := range s.shards {
		for _, svc := range shard {
			rec := ServiceRecord{ImageID: svc.ImageID, ImageName: svc.ImageName, Algorithm: svc.Algorithm,
				ExternalPort: svc.ExternalPort, Static: svc.Static, Updated: svc.Updated, Containers: make([]ContainerRecord, len(svc.Containers)),
				ServiceOptions: svc.Options}
			for i, c := range svc.Containers {
				rec.Containers[i] = ContainerRecord(c.ContainerSpec)
			}
			st.Services = append(st.Services, rec)
		}
	}
	sortRecords(st.Services)
	return st
}

// SetStore makes the registry durable in store: from now on every
// acknowledged change is committed there before the change returns.
func (r *Registry) SetStore(store Store) {
	r.mu.Lock()
	r.store = store
	r.mu.Unlock()
}

// Restore replaces the registry's content with a stored state (at start,
// before any traffic). Statuses come back as last stored; the health
// checker re-checks every container at once. The state is validated like a
// registration; a container whose host the upstream guard now refuses (the
// operator tightened allowed_upstreams) is left out and named in dropped,
// so that it gets no traffic while the rest of the registry comes back.
func (r *Registry) Restore(st *State) (dropped []string, err error) {
	specs := make([]ServiceSpec, 0, len(st.Services))
	for _, rec := range st.Services {
		spec, err := rec.spec()
		if err != nil {
			return nil, fmt.Errorf("service %d: %v", rec.ImageID, err)
		}
		kept := spec.Containers[:0]
		for _, c := range spec.Containers {
			if err := r.checkHosts(c); err != nil {
				dropped = append(dropped, fmt.Sprintf("service %d container %q: %v", rec.ImageID, c.ContainerID, err))
				continue
			}
			kept = append(kept, c)
		}
		spec.Containers = kept
		specs = append(specs, spec)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next := emptySnapshot()
	next.retired = r.snap.Load().retired // it only grows
	for _, spec := range specs {
		var err error
		if next, _, err = r.register(next, spec); err != nil {
			return nil, fmt.Errorf("service %d: %v", spec.ImageID, err)
		}
	}
	next.version = st.Version
	r.snap.Store(next)
	r.commits.mu.Lock()
	r.commits.durable = st.Version
	r.commits.mu.Unlock()
	return dropped, nil
}

// spec validates a stored service as strictly as a registration: by the
// same Check.
func (rec ServiceRecord) spec() (ServiceSpec, error) {
	spec := ServiceSpec{ImageID: rec.ImageID, ImageName: rec.ImageName, Algorithm: rec.Algorithm,
		ExternalPort: rec.ExternalPort, Static: rec.Static, Updated: rec.Updated, Options: rec.ServiceOptions}
	if alg, ok := ParseAlgorithm(string(rec.Algorithm)); ok {
		spec.Algorithm = alg
	}
	for _, c := range rec.Containers {
		if c.Host == "" { // a registration may omit it, a stored record has it filled in
			return spec, fmt.Errorf("container %q: host is empty", c.ContainerID)
		}
		spec.Containers = append(spec.Containers, ContainerSpec(c))
	}
	return spec, FieldErrors(spec.Check())
}

func sortRecords(rs []ServiceRecord) {
	slices.SortFunc(rs, func(a, b ServiceRecord) int { return cmpInt64(a.ImageID, b.ImageID) })
}

// committer implements group commit: a writer waiting for its change to be
// durable either flushes (writing the latest snapshot, which holds every
// change published so far) or, when a flush is already running, waits for
// the next one, which a waiter then starts for everyone who arrived meanwhile.
type committer struct {
	mu       sync.Mutex
	cond     *sync.Cond
	flushing bool
	durable  uint64 // the highest version known to be committed
}

// makeDurable returns when the snapshot of the given version (or a later one)
// is committed to the store, or with the error of the flush that tried.
func (r *Registry) makeDurable(version uint64) error {
	store := r.currentStore()
	if store == nil {
		return nil
	}
	c := &r.commits
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.durable < version {
		if c.flushing {
			c.cond.Wait()
			continue
		}
		c.flushing = true
		c.mu.Unlock()
		snap := r.snap.Load()
		err := store.Commit(snap.state())
		c.mu.Lock()
		c.flushing = false
		c.cond.Broadcast()
		if err != nil {
			return &Error{Kind: KindStorage, Detail: fmt.Sprintf(
				"the change is applied but could not be saved to %s: %v; it is saved with the next successful change",
				store.Describe(), err)}
		}
		c.durable = max(c.durable, snap.version)
	}
	return nil
}

func (r *Registry) currentStore() Store {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.store
}
