package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

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
	// Rollout is the image's canary rollout, when it has one.
	Rollout *Rollout `json:"rollout,omitempty"`
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

// SetStore makes the registry durable in store: from now on every
// acknowledged change is committed there before it is published.
func (r *Registry) SetStore(store RecordStore) {
	r.mu.Lock()
	r.store = store
	r.mu.Unlock()
}

// spec validates a stored service as strictly as a registration: by the
// same Check.
func (rec ServiceRecord) spec() (ServiceSpec, error) {
	spec := ServiceSpec{ImageID: rec.ImageID, ImageName: rec.ImageName, Algorithm: rec.Algorithm,
		ExternalPort: rec.ExternalPort, Static: rec.Static, Updated: rec.Updated, Options: rec.ServiceOptions,
		Rollout: rec.Rollout}
	if alg, ok := ParseAlgorithm(string(rec.Algorithm)); ok {
		spec.Algorithm = alg
	}
	for _, c := range rec.Containers {
		if c.Host == "" { // a registration may omit it, a stored record has it filled in
			return spec, fmt.Errorf("container %q: host is empty", c.ContainerID)
		}
		spec.Containers = append(spec.Containers, ContainerSpec(c))
	}
	fe := spec.Check()
	if spec.Rollout != nil {
		ro := spec.Rollout.clone()
		for _, f := range ro.Check() {
			f.Loc = append([]any{"rollout"}, f.Loc...)
			fe = append(fe, f)
		}
		spec.Rollout = ro
	}
	return spec, FieldErrors(fe)
}

func sortRecords(rs []ServiceRecord) {
	slices.SortFunc(rs, func(a, b ServiceRecord) int { return cmpInt64(a.ImageID, b.ImageID) })
}
