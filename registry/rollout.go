// rollout.go owns progressive delivery in the registry: a rollout of a
// canary image, kept in the stable image's record (so the store persists it
// and a cluster shares it), its rules, the split it drives, the changes the
// API and the driver make to it, and the counts it is judged on.

package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"time"
)

// RolloutState is where a rollout is.
type RolloutState string

// The states of a rollout. Progressing, paused and promoted drive the
// stable image's split; rolled back and aborted are over (split 0).
const (
	RolloutProgressing RolloutState = "progressing"
	RolloutPaused      RolloutState = "paused"
	RolloutPromoted    RolloutState = "promoted"
	RolloutRolledBack  RolloutState = "rolled_back"
	RolloutAborted     RolloutState = "aborted"
)

// Active reports whether a rollout in this state drives the split.
func (s RolloutState) Active() bool {
	return s == RolloutProgressing || s == RolloutPaused || s == RolloutPromoted
}

// Decisions of a rollout's analysis.
const (
	DecisionAdvance  = "advance"
	DecisionPromote  = "promote"
	DecisionRollback = "rollback"
	DecisionPause    = "pause"
	DecisionResume   = "resume"
	DecisionAbort    = "abort"
)

// Defaults and limits of a rollout.
const (
	DefaultRolloutMinRequests  = 50
	DefaultRolloutMaxErrorRate = 0.01
	DefaultRolloutMaxP99Ratio  = 1.5
	MinRolloutInterval         = time.Second
	MaxRolloutInterval         = 24 * time.Hour
	MaxRolloutSteps            = 100
	MaxRolloutP99Ratio         = 100
	// MaxRolloutAnalysis bounds the analysis a rollout keeps: the oldest
	// entries are dropped past it (steps and manual decisions together).
	MaxRolloutAnalysis = 256
	// MaxWebhookURLLength bounds promote_url.
	MaxWebhookURLLength = 2048
)

// Rollout is a canary rollout of the stable image (the service whose record
// holds it) toward CanaryImageID: the step's percent of the stable image's
// requests goes to the canary, through the service's split. One version is
// immutable, like the Service holding it.
type Rollout struct {
	// CanaryImageID is the image the rollout moves traffic to. Required:
	// a registered image other than the stable one.
	CanaryImageID int64 `json:"canary_image_id"`
	// Steps are the canary's percents, rising, the last 100 (fractions to
	// 0.01). Required.
	Steps []float64 `json:"steps"`
	// Interval is how long each step lasts, 1s to 24h. Required.
	Interval Duration `json:"interval"`
	// MinRequests is the least the canary must serve in a step before the
	// step can be judged. Default 50.
	MinRequests int `json:"min_requests"`
	// MaxErrorRate is the largest share of the canary's requests in a
	// step that may fail (a 5xx or no answer), 0 to 1. Default 0.01.
	MaxErrorRate float64 `json:"max_error_rate"`
	// MaxP99Ratio is the largest ratio of the canary's p99 latency to the
	// stable image's in the same step; 0 turns the check off. Default 1.5.
	MaxP99Ratio float64 `json:"max_p99_ratio"`
	// PromoteURL is POSTed the outcome (promoted, rolled back, aborted).
	// Default: none.
	PromoteURL string `json:"promote_url,omitempty"`

	// State is where the rollout is; Step the step being run, from 1 to
	// len(Steps); Percent the canary's share now.
	State    RolloutState      `json:"state"`
	Step     int               `json:"step"`
	Percent  float64           `json:"percent"`
	Analysis []RolloutAnalysis `json:"analysis"`
	// Started is when the rollout was started (it tells one rollout of an
	// image from the next); Updated when it last changed.
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
	// Notified says the outcome was announced (events, promote_url), so
	// that a restart announces it once more only if it was not.
	Notified bool `json:"notified,omitempty"`
}

// RolloutAnalysis is one decision of a rollout: a judged step with both
// sides' figures in it, or a decision made through the API (no figures).
type RolloutAnalysis struct {
	Step     int          `json:"step"`
	Percent  float64      `json:"percent"`
	Stable   *SideFigures `json:"stable,omitempty"`
	Canary   *SideFigures `json:"canary,omitempty"`
	Decision string       `json:"decision"`
	Reason   string       `json:"reason"`
	At       time.Time    `json:"at"`
}

// SideFigures are one side's figures in a step: its requests, the share
// that failed, and its p99 latency in milliseconds (null without requests).
type SideFigures struct {
	Requests  uint64   `json:"requests"`
	Errors    uint64   `json:"errors"`
	ErrorRate float64  `json:"error_rate"`
	P99Ms     *float64 `json:"p99_ms"`
}

// rolloutInput is the wire form of POST …/rollout.
type rolloutInput struct {
	CanaryImageID laxInt     `json:"canary_image_id"`
	Steps         *[]float64 `json:"steps"`
	Interval      *Duration  `json:"interval"`
	MinRequests   laxInt     `json:"min_requests"`
	MaxErrorRate  *float64   `json:"max_error_rate"`
	MaxP99Ratio   *float64   `json:"max_p99_ratio"`
	PromoteURL    *string    `json:"promote_url"`
}

// DecodeRollout decodes and checks the body of POST …/rollout: the rollout
// asked for, with its defaults filled in, not started yet. What needs the
// registry (the canary, the image's split) StartRollout checks.
func DecodeRollout(body []byte) (Rollout, error) {
	var ro Rollout
	if firstByte(body) != '{' {
		return ro, invalid(`request body must be a JSON object such as {"canary_image_id": 2, "steps": [5, 20, 50, 100], "interval": "1m"}`)
	}
	var in rolloutInput
	if err := json.Unmarshal(body, &in); err != nil {
		return ro, jsonError(err)
	}
	var fe fieldErrors
	ro.MinRequests, ro.MaxErrorRate, ro.MaxP99Ratio = DefaultRolloutMinRequests, DefaultRolloutMaxErrorRate, DefaultRolloutMaxP99Ratio
	if v, ok := in.CanaryImageID.check(&fe, "canary_image_id", true, "body", "canary_image_id"); ok {
		ro.CanaryImageID = v
	}
	if in.Steps == nil {
		fe.add("missing", "steps is required: the canary's percents, rising and ending at 100, e.g. [5, 20, 50, 100]", "body", "steps")
	} else {
		ro.Steps = *in.Steps
	}
	if in.Interval == nil {
		fe.add("missing", fmt.Sprintf("interval is required: how long each step lasts, from %s to %s, e.g. \"1m\"", MinRolloutInterval, MaxRolloutInterval), "body", "interval")
	} else {
		ro.Interval = *in.Interval
	}
	if v, ok := in.MinRequests.check(&fe, "min_requests", false, "body", "min_requests"); ok {
		if v < 1 || v > MaxOptionCount {
			fe.add("value_error", fmt.Sprintf("min_requests must be from 1 to %d, got %d", MaxOptionCount, v), "body", "min_requests")
		} else {
			ro.MinRequests = int(v)
		}
	}
	if in.MaxErrorRate != nil {
		ro.MaxErrorRate = *in.MaxErrorRate
	}
	if in.MaxP99Ratio != nil {
		ro.MaxP99Ratio = *in.MaxP99Ratio
	}
	if in.PromoteURL != nil {
		ro.PromoteURL = *in.PromoteURL
	}
	for _, f := range ro.Check() {
		if !fe.has(append([]any{"body"}, f.Loc...)) {
			fe.add(f.Type, f.Msg, append([]any{"body"}, f.Loc...)...)
		}
	}
	return ro, fe.err()
}

// Check reports what is wrong with the rollout's settings (located by
// their JSON names), and rounds its percents to 0.01: the rules the API's
// decoder and a stored record's restore share.
func (ro *Rollout) Check() []FieldError {
	var fe fieldErrors
	if ro.CanaryImageID <= 0 {
		fe.add("value_error", fmt.Sprintf("canary_image_id must be the positive image_id of a registered image, got %d", ro.CanaryImageID), "canary_image_id")
	}
	switch {
	case len(ro.Steps) == 0:
		fe.add("value_error", "steps is empty: list the canary's percents, rising and ending at 100, e.g. [5, 20, 50, 100]", "steps")
	case len(ro.Steps) > MaxRolloutSteps:
		fe.add("value_error", fmt.Sprintf("steps has %d entries; a rollout has at most %d steps", len(ro.Steps), MaxRolloutSteps), "steps")
	default:
		ro.Steps = slices.Clone(ro.Steps)
		for i, p := range ro.Steps {
			if math.IsNaN(p) || p <= 0 || p > 100 {
				fe.add("value_error", fmt.Sprintf("steps[%d] must be a percent above 0 and at most 100, got %v", i, p), "steps", i)
				continue
			}
			ro.Steps[i] = math.Round(p*100) / 100
			if i > 0 && ro.Steps[i] <= ro.Steps[i-1] {
				fe.add("value_error", fmt.Sprintf("steps must rise: steps[%d] is %v, not above steps[%d] %v", i, ro.Steps[i], i-1, ro.Steps[i-1]), "steps", i)
			}
		}
		if last := len(ro.Steps) - 1; !fe.has([]any{"steps", last}) && ro.Steps[last] != 100 {
			fe.add("value_error", fmt.Sprintf("steps must end at 100 (the canary takes all the traffic before it is promoted), got %v", ro.Steps[last]), "steps", last)
		}
	}
	if d := time.Duration(ro.Interval); d < MinRolloutInterval || d > MaxRolloutInterval {
		fe.add("value_error", fmt.Sprintf("interval must be from %s to %s, got %s", MinRolloutInterval, MaxRolloutInterval, d), "interval")
	}
	if ro.MinRequests < 1 || ro.MinRequests > MaxOptionCount {
		if !fe.has([]any{"min_requests"}) {
			fe.add("value_error", fmt.Sprintf("min_requests must be from 1 to %d, got %d", MaxOptionCount, ro.MinRequests), "min_requests")
		}
	}
	if math.IsNaN(ro.MaxErrorRate) || ro.MaxErrorRate < 0 || ro.MaxErrorRate > 1 {
		fe.add("value_error", fmt.Sprintf("max_error_rate must be a share from 0 to 1 (0.01 is 1%%), got %v", ro.MaxErrorRate), "max_error_rate")
	}
	if r := ro.MaxP99Ratio; math.IsNaN(r) || (r != 0 && (r < 1 || r > MaxRolloutP99Ratio)) {
		fe.add("value_error", fmt.Sprintf("max_p99_ratio must be 0 (off) or from 1 to %d, got %v", MaxRolloutP99Ratio, r), "max_p99_ratio")
	}
	if ro.PromoteURL != "" {
		if msg := CheckWebhookURL(ro.PromoteURL); msg != "" {
			fe.add("value_error", "promote_url "+msg, "promote_url")
		}
	}
	return fe
}

// CheckWebhookURL reports what is wrong with a webhook URL ("" nothing):
// an absolute http or https URL with a host.
func CheckWebhookURL(raw string) string { return CheckWebhookURLAs(raw, raw) }

// CheckWebhookURLAs is CheckWebhookURL for the URL raw, naming it as shown
// in its messages: what the user wrote, when raw is that with its
// placeholders filled in (on demand's "{image_id}").
func CheckWebhookURLAs(raw, shown string) string {
	if len(raw) > MaxWebhookURLLength {
		return fmt.Sprintf("is %d characters long; at most %d", len(raw), MaxWebhookURLLength)
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return fmt.Sprintf("%q is not a URL (%v): use an absolute http:// or https:// URL", shown, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Sprintf("%q: use an http:// or https:// URL", shown)
	case u.Host == "":
		return fmt.Sprintf("%q has no host", shown)
	}
	return ""
}

// webhookHostPort returns the host and port a webhook URL dials.
func webhookHostPort(raw string) (string, int) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", 0
	}
	port, _ := strconv.Atoi(u.Port())
	if port == 0 {
		port = 80
		if u.Scheme == "https" {
			port = 443
		}
	}
	return u.Hostname(), port
}

// clone returns a copy of the rollout that shares nothing with it.
func (ro *Rollout) clone() *Rollout {
	c := *ro
	c.Steps = slices.Clone(ro.Steps)
	c.Analysis = slices.Clone(ro.Analysis)
	return &c
}

// split is the split the rollout drives: the canary at its percent while
// it is active, none once it is over.
func (ro *Rollout) split() []SplitTarget {
	if ro == nil || !ro.State.Active() {
		return nil
	}
	p := ro.Percent
	return []SplitTarget{{ImageID: ro.CanaryImageID, Percent: &p}}
}

// StepPercent is the canary's percent at step (1 to len(Steps)).
func (ro *Rollout) StepPercent(step int) float64 {
	if step < 1 || step > len(ro.Steps) {
		return 0
	}
	return ro.Steps[step-1]
}

// Record appends a decision to the analysis (keeping at most
// MaxRolloutAnalysis entries) and marks the rollout updated at a.At.
func (ro *Rollout) Record(a RolloutAnalysis) {
	if len(ro.Analysis) >= MaxRolloutAnalysis {
		ro.Analysis = slices.Delete(ro.Analysis, 0, len(ro.Analysis)-MaxRolloutAnalysis+1)
	}
	ro.Analysis = append(ro.Analysis, a)
	ro.Updated = a.At
}

// StickyGeneration names the rollout's step for the split's sticky cookie
// of the stable side: a client kept on the stable image is kept there
// within a step and drawn again at the next one, while one sent to the
// canary stays there (its share only grows). "" without an active rollout.
func (ro *Rollout) StickyGeneration() string {
	if ro == nil || !ro.State.Active() {
		return ""
	}
	return strconv.FormatInt(ro.Started.UnixNano(), 36) + "." + strconv.Itoa(ro.Step)
}

// replacedAll reports whether none of old's containers is in spec: the
// orchestrator replaced the image's containers.
func replacedAll(old *Service, spec ServiceSpec) bool {
	for _, c := range spec.Containers {
		if old.Container(c.ContainerID) != nil {
			return false
		}
	}
	return true
}

// carryRollout keeps old's rollout in a registration of the image: an
// active rollout's split stays (a split in the registration is 409), and
// a promoted one ends when the registration replaces every container (the
// orchestrator moved the image to the canary's version).
func carryRollout(old *Service, spec *ServiceSpec) error {
	if old == nil || old.Rollout == nil {
		return nil
	}
	ro := old.Rollout
	if ro.State.Active() && len(spec.Options.Split) > 0 {
		return conflict("image %d's split is driven by its rollout to image %d (%s): pause it, promote it or delete it (DELETE …/services/%d/rollout) before setting a split by hand",
			old.ImageID, ro.CanaryImageID, ro.State, old.ImageID)
	}
	if ro.State == RolloutPromoted && len(old.Containers) > 0 && replacedAll(old, *spec) {
		return nil // the rollout is done: the record drops it
	}
	spec.Rollout = ro
	if ro.State.Active() {
		spec.Options.Split = ro.split()
	}
	return nil
}

// StartRollout starts ro (from DecodeRollout) on the stable image imageID:
// 404 for an unknown image, 422 for a canary that is not registered, is the
// image itself or has no available container, a static service or a split
// set by hand, 409 while another rollout of the image is active. The first
// step's share goes to the canary at once. A refused rollout changes
// nothing.
func (r *Registry) StartRollout(imageID int64, ro Rollout) (*Rollout, error) {
	if fe := fieldErrors(ro.Check()); len(fe) > 0 {
		for i := range fe {
			fe[i].Loc = append([]any{"body"}, fe[i].Loc...)
		}
		return nil, fe.err()
	}
	if ro.PromoteURL != "" {
		host, port := webhookHostPort(ro.PromoteURL)
		r.mu.Lock()
		guard := r.opts.Guard
		r.mu.Unlock()
		if err := guard.Check(host, port); err != nil {
			return nil, &Error{Kind: KindInvalid, Fields: []FieldError{{Loc: []any{"body", "promote_url"}, Type: "value_error",
				Msg: "promote_url: " + err.Error()}}}
		}
	}
	var out *Rollout
	err := r.update(true, func(snap *snapshot) (*snapshot, error) {
		old := snap.lookup(imageID)
		if old == nil {
			return nil, unknownImage(imageID)
		}
		if cur := old.Rollout; cur != nil && cur.State.Active() {
			return nil, conflict("image %d already has a rollout to image %d (%s): delete it (DELETE …/services/%d/rollout) before starting another",
				imageID, cur.CanaryImageID, cur.State, imageID)
		}
		var fe fieldErrors
		switch canary := snap.lookup(ro.CanaryImageID); {
		case ro.CanaryImageID == imageID:
			fe.add("value_error", fmt.Sprintf("canary_image_id %d is the image itself: name the image of the new version", imageID), "body", "canary_image_id")
		case canary == nil:
			fe.add("value_error", fmt.Sprintf("canary_image_id %d is not registered: register the new version's containers as image %d first", ro.CanaryImageID, ro.CanaryImageID), "body", "canary_image_id")
		case !hasAvailable(canary):
			fe.add("value_error", fmt.Sprintf("canary_image_id %d has no available container: register a healthy container of it first", ro.CanaryImageID), "body", "canary_image_id")
		case splitPath(snap, ro.CanaryImageID, imageID) != nil:
			fe.add("value_error", fmt.Sprintf("canary_image_id %d splits back to image %d: remove that split first", ro.CanaryImageID, imageID), "body", "canary_image_id")
		}
		if old.Static {
			fe.add("value_error", fmt.Sprintf("image %d is a static service (declared in the configuration, which a reload applies again): register it through the API to roll it out", imageID), "path", "image_id")
		}
		if len(old.Options.Split) > 0 {
			fe.add("value_error", fmt.Sprintf("image %d has a split set by hand: register it without split before starting a rollout, which drives the split itself", imageID), "path", "image_id")
		}
		if len(fe) > 0 {
			return nil, fe.err()
		}
		t := now().UTC()
		n := ro.clone()
		n.State, n.Step, n.Percent, n.Analysis, n.Notified = RolloutProgressing, 1, n.Steps[0], []RolloutAnalysis{}, false
		n.Started, n.Updated = t, t
		out = n
		return snap.replace(old, old.withRollout(n)), nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// hasAvailable reports whether any container of svc can take a request
// now: available and not ejected.
func hasAvailable(svc *Service) bool {
	for _, c := range svc.Available() {
		if !c.Stats.Ejected() {
			return true
		}
	}
	return false
}

// CanaryAvailable reports whether the image is registered and has a
// container that can take a request now (available, not ejected).
func (r *Registry) CanaryAvailable(imageID int64) bool {
	svc := r.Lookup(imageID)
	return svc != nil && hasAvailable(svc)
}

// withRollout returns a new version of s with the rollout ro (nil: none)
// and the split it drives.
func (s *Service) withRollout(ro *Rollout) *Service {
	spec := s.spec()
	spec.Rollout = ro
	if ro != nil || s.Rollout != nil {
		spec.Options.Split = ro.split()
	}
	return newService(spec, s.Containers, s.State)
}

// ErrRolloutStale is returned by a ChangeRollout function that finds the
// rollout no longer as it expected; nothing is changed.
var ErrRolloutStale = &Error{Kind: KindConflict, Detail: "the rollout changed meanwhile"}

// ChangeRollout changes the image's rollout: change gets a copy of the
// current one to modify (404 when the image has none) and may return an
// error to change nothing. The split follows the rollout's state and
// percent. It returns the rollout as changed.
func (r *Registry) ChangeRollout(imageID int64, change func(ro *Rollout) error) (*Rollout, error) {
	var out *Rollout
	err := r.update(true, func(snap *snapshot) (*snapshot, error) {
		old := snap.lookup(imageID)
		if old == nil {
			return nil, unknownImage(imageID)
		}
		if old.Rollout == nil {
			return nil, noRollout(imageID)
		}
		n := old.Rollout.clone()
		if err := change(n); err != nil {
			return nil, err
		}
		out = n
		return snap.replace(old, old.withRollout(n)), nil
	})
	return out, err
}

func noRollout(imageID int64) *Error {
	return notFound("image %d has no rollout: start one with POST …/services/%d/rollout", imageID, imageID)
}

// GetRollout returns the image's rollout (404 when the image or its
// rollout does not exist).
func (r *Registry) GetRollout(imageID int64) (*Rollout, error) {
	svc, err := r.Get(imageID)
	if err != nil {
		return nil, err
	}
	if svc.Rollout == nil {
		return nil, noRollout(imageID)
	}
	return svc.Rollout, nil
}

// manual is a decision made through the API at the current step.
func manual(ro *Rollout, decision, reason string) RolloutAnalysis {
	return RolloutAnalysis{Step: ro.Step, Percent: ro.Percent, Decision: decision, Reason: reason, At: now().UTC()}
}

// PauseRollout holds a progressing rollout at its step (409 otherwise):
// the split stays, no step ends, and a canary over a bound is still rolled
// back.
func (r *Registry) PauseRollout(imageID int64) (*Rollout, error) {
	return r.ChangeRollout(imageID, func(ro *Rollout) error {
		if ro.State != RolloutProgressing {
			return conflict("image %d's rollout is %s: only a progressing rollout can be paused", imageID, ro.State)
		}
		ro.State = RolloutPaused
		ro.Record(manual(ro, DecisionPause, "paused through the API"))
		return nil
	})
}

// ResumeRollout resumes a paused rollout (409 otherwise): its step starts
// again, with a fresh interval and fresh counts.
func (r *Registry) ResumeRollout(imageID int64) (*Rollout, error) {
	return r.ChangeRollout(imageID, func(ro *Rollout) error {
		if ro.State != RolloutPaused {
			return conflict("image %d's rollout is %s: only a paused rollout can be resumed", imageID, ro.State)
		}
		ro.State = RolloutProgressing
		ro.Record(manual(ro, DecisionResume, "resumed through the API: the step starts again"))
		return nil
	})
}

// PromoteRollout skips a progressing or paused rollout to 100% (409
// otherwise).
func (r *Registry) PromoteRollout(imageID int64) (*Rollout, error) {
	return r.ChangeRollout(imageID, func(ro *Rollout) error {
		if ro.State != RolloutProgressing && ro.State != RolloutPaused {
			return conflict("image %d's rollout is %s: only a progressing or paused rollout can be promoted", imageID, ro.State)
		}
		ro.State, ro.Step, ro.Percent, ro.Notified = RolloutPromoted, len(ro.Steps), 100, false
		ro.Record(manual(ro, DecisionPromote, "promoted through the API"))
		return nil
	})
}

// DeleteRollout aborts an active rollout (the split goes back to 0; the
// rollout stays, aborted, for GET to show) or, once it is over, removes
// it. It returns the rollout as it was left.
func (r *Registry) DeleteRollout(imageID int64) (*Rollout, error) {
	var out *Rollout
	err := r.update(true, func(snap *snapshot) (*snapshot, error) {
		old := snap.lookup(imageID)
		if old == nil {
			return nil, unknownImage(imageID)
		}
		if old.Rollout == nil {
			return nil, noRollout(imageID)
		}
		if !old.Rollout.State.Active() {
			out = old.Rollout
			return snap.replace(old, old.withRollout(nil)), nil
		}
		n := old.Rollout.clone()
		n.State, n.Percent, n.Notified = RolloutAborted, 0, false
		n.Record(manual(n, DecisionAbort, "deleted through the API: the split is back to 0"))
		out = n
		return snap.replace(old, old.withRollout(n)), nil
	})
	return out, err
}

// LatencyCounts are the bucket counts of a latency Histogram (bucket i
// holds the durations up to BucketBound(i)).
type LatencyCounts [NumBuckets]uint64

// Quantile returns the upper bound of the bucket holding quantile q (0 < q
// ≤ 1) in milliseconds; ok is false when nothing was counted.
func (l *LatencyCounts) Quantile(q float64) (ms float64, ok bool) {
	qs, ok := quantiles((*[numBuckets]uint64)(l), []float64{q})
	return qs[0], ok
}

// StepCounts are the cumulative counts of one image, as a rollout judges
// them: its finished requests, those that failed (a 5xx or no answer) and
// the distribution of their durations. A step is judged on the difference
// of two readings (Sub).
type StepCounts struct {
	Requests, Errors uint64
	Latency          LatencyCounts
}

// Add adds o's counts to c (a cluster sums its nodes' counts).
func (c *StepCounts) Add(o StepCounts) {
	c.Requests += o.Requests
	c.Errors += o.Errors
	for i, n := range o.Latency {
		c.Latency[i] += n
	}
}

// Sub returns the counts since the reading base. Counts below base (the
// image was removed and registered again, or a node restarted) mean the
// counters started again: the counts are then taken whole.
func (c StepCounts) Sub(base StepCounts) StepCounts {
	if c.Requests < base.Requests || c.Errors < base.Errors {
		return c
	}
	d := StepCounts{Requests: c.Requests - base.Requests, Errors: c.Errors - base.Errors}
	for i, n := range c.Latency {
		if n < base.Latency[i] {
			return c
		}
		d.Latency[i] = n - base.Latency[i]
	}
	return d
}

// CountsSource gives a rollout's driver the counts it judges a step on.
// Counts returns the cumulative counts of an image (the stable one or the
// canary), summed over every node that serves it; a step's counts are the
// difference between the reading at the step's start and the reading now.
// An image that is not registered has zero counts. On one node it is
// LocalCounts; a cluster's source adds the other nodes' counts, which it
// shares through the store.
type CountsSource interface {
	Counts(ctx context.Context, imageID int64) (StepCounts, error)
}

// LocalCounts is the CountsSource of one node: the registry's own counters.
type LocalCounts struct{ Registry *Registry }

// Counts returns this node's counts of the image.
func (l LocalCounts) Counts(_ context.Context, imageID int64) (StepCounts, error) {
	svc := l.Registry.Lookup(imageID)
	if svc == nil {
		return StepCounts{}, nil
	}
	return CountsOf(&svc.State.Counters), nil
}

// CountsOf reads the counts of a service's counters: its finished requests
// by their status class, and its latency histogram.
func CountsOf(c *Counters) StepCounts {
	t := c.Traffic()
	var sc StepCounts
	for i := range t.Classes {
		n := uint64(max(t.Classes[i].Load(), 0))
		sc.Requests += n
		if i == 0 || i == 5 {
			sc.Errors += n
		}
	}
	sc.Latency, _ = t.Latency.Snapshot()
	return sc
}
