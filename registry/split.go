// split.go owns traffic split and mirroring in the registry: their options and rules, the references between images (checked where a registration is applied), the split's rotation, the mirror's share and their counters.

package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// SplitTarget is one entry of a service's split: a share of the image's
// requests served by another image, with that image's algorithm,
// containers and options.
type SplitTarget struct {
	// ImageID is the image that serves the share. Required; it must be
	// registered, and may not split back to this image (directly or not).
	ImageID int64 `json:"image_id"`
	// Percent is the share of the image's requests sent there, from 0 to
	// 100 (fractions to 0.01); the entries together at most 100. 0 sends
	// only the requests that ask for it (Header, Cookie). Required.
	Percent *float64 `json:"percent"`
	// Header and Cookie name a request header and a cookie: the value
	// "always" sends the request to ImageID, "never" keeps it on the
	// image. Default: none.
	Header string `json:"header,omitempty"`
	Cookie string `json:"cookie,omitempty"`
}

// Mirror copies a share of the image's requests to another image, fire and
// forget: the client never waits for the copy, whose answer is discarded.
type Mirror struct {
	// ImageID is the image the copies go to, by its algorithm. Required;
	// it must be registered and may not be the image itself.
	ImageID int64 `json:"image_id"`
	// Percent is the share of the requests (of the mirrored methods)
	// copied, from 0 to 100. Required: a mirror that copies everything
	// when the share is left out doubles the load by surprise.
	Percent *float64 `json:"percent"`
	// MaxBody is the largest request body copied; a request with a larger
	// body is not mirrored (and counted). Default DefaultMirrorMaxBody, at
	// most MaxMirrorBody.
	MaxBody Size `json:"max_body,omitempty"`
	// Methods are the request methods mirrored. Default GET, HEAD and
	// OPTIONS (the safe methods): writes are not replayed unless listed.
	Methods []string `json:"methods,omitempty"`
	// MaxInFlight caps the copies in flight to the target image at once;
	// past it a copy is dropped (and counted). Default
	// DefaultMirrorMaxInFlight.
	MaxInFlight int `json:"max_in_flight,omitempty"`
}

// Defaults and limits of split and mirror.
const (
	// MaxSplitTargets is the most entries a split has.
	MaxSplitTargets = 16
	// MaxMirrorMethods is the most methods a mirror lists.
	MaxMirrorMethods = 32
	// DefaultMirrorMaxBody and MaxMirrorBody are the default and the
	// largest max_body of a mirror.
	DefaultMirrorMaxBody = 64 << 10
	MaxMirrorBody        = 16 << 20
	// DefaultMirrorMaxInFlight and MaxMirrorInFlight are the default and
	// the largest max_in_flight of a mirror.
	DefaultMirrorMaxInFlight = 100
	MaxMirrorInFlight        = 100_000
	// splitScale is 100% in the units shares are counted in (0.01%).
	splitScale = 10_000
)

// DefaultMirrorMethods are the methods a mirror copies unless told
// otherwise: the safe ones, which change nothing on the target.
var DefaultMirrorMethods = []string{"GET", "HEAD", "OPTIONS"}

// Override values of a split's header or cookie.
const (
	SplitAlways = "always"
	SplitNever  = "never"
)

// checkSplit normalises and checks the split and the mirror of o (what
// needs no other image); checkReferences checks what does.
func (o *ServiceOptions) checkSplit(fe *fieldErrors, at func(field ...any) []any) {
	if len(o.Split) > 0 {
		o.Split = slices.Clone(o.Split)
	}
	if len(o.Split) > MaxSplitTargets {
		fe.add("value_error", fmt.Sprintf("split has %d entries; at most %d images may share an image's requests", len(o.Split), MaxSplitTargets), at("split")...)
	}
	total := 0
	seen := map[int64]int{}
	for i := range o.Split {
		t := &o.Split[i]
		if t.ImageID <= 0 {
			fe.add("value_error", fmt.Sprintf("split[%d].image_id must be the positive image_id of a registered image, got %d", i, t.ImageID), at("split", i, "image_id")...)
		} else if j, dup := seen[t.ImageID]; dup {
			fe.add("value_error", fmt.Sprintf("split[%d].image_id %d is also split[%d]: give each image one entry with the sum of its percents", i, t.ImageID, j), at("split", i, "image_id")...)
		}
		seen[t.ImageID] = i
		bp, ok := checkPercent(fe, fmt.Sprintf("split[%d].percent", i), t.Percent, at("split", i, "percent"))
		if ok {
			p := float64(bp) / 100
			t.Percent = &p
			total += bp
		}
		if t.Header != "" && !ValidToken(t.Header) {
			fe.add("value_error", fmt.Sprintf("split[%d].header %q is not a header name", i, t.Header), at("split", i, "header")...)
		}
		if t.Cookie != "" && !ValidToken(t.Cookie) {
			fe.add("value_error", fmt.Sprintf("split[%d].cookie %q is not a cookie name", i, t.Cookie), at("split", i, "cookie")...)
		}
	}
	if total > splitScale {
		fe.add("value_error", fmt.Sprintf("the percents of split add up to %s, more than 100: lower them so that at most 100%% of the image's requests go elsewhere", formatBP(total)), at("split")...)
	}
	m := o.Mirror
	if m == nil {
		return
	}
	cp := *m
	o.Mirror, m = &cp, &cp
	if m.ImageID <= 0 {
		fe.add("value_error", fmt.Sprintf("mirror.image_id must be the positive image_id of a registered image, got %d", m.ImageID), at("mirror", "image_id")...)
	}
	if bp, ok := checkPercent(fe, "mirror.percent", m.Percent, at("mirror", "percent")); ok {
		p := float64(bp) / 100
		m.Percent = &p
	}
	if m.MaxBody == 0 {
		m.MaxBody = DefaultMirrorMaxBody
	}
	if m.MaxBody < 0 || m.MaxBody > MaxMirrorBody {
		fe.add("value_error", fmt.Sprintf("mirror.max_body must be from 1 byte to %s, got %d bytes", Size(MaxMirrorBody), m.MaxBody), at("mirror", "max_body")...)
	}
	if m.Methods == nil {
		m.Methods = slices.Clone(DefaultMirrorMethods)
	} else {
		m.Methods = slices.Clone(m.Methods)
	}
	if len(m.Methods) == 0 {
		fe.add("value_error", "mirror.methods is empty: list the methods to copy, or leave it out for GET, HEAD and OPTIONS", at("mirror", "methods")...)
	}
	if len(m.Methods) > MaxMirrorMethods {
		fe.add("value_error", fmt.Sprintf("mirror.methods has %d entries; list at most %d methods", len(m.Methods), MaxMirrorMethods), at("mirror", "methods")...)
		m.Methods = m.Methods[:MaxMirrorMethods] // one error for the list, not one per entry
	}
	for i, name := range m.Methods {
		if !ValidToken(name) || strings.ToUpper(name) != name {
			fe.add("value_error", fmt.Sprintf("mirror.methods[%d] %q is not an upper-case method such as GET or POST", i, name), at("mirror", "methods", i)...)
		}
	}
	if m.MaxInFlight == 0 {
		m.MaxInFlight = DefaultMirrorMaxInFlight
	}
	if m.MaxInFlight < 0 || m.MaxInFlight > MaxMirrorInFlight {
		fe.add("value_error", fmt.Sprintf("mirror.max_in_flight must be from 1 to %d, got %d", MaxMirrorInFlight, m.MaxInFlight), at("mirror", "max_in_flight")...)
	}
}

// checkPercent checks a required percent and returns it in 0.01%.
func checkPercent(fe *fieldErrors, field string, p *float64, loc []any) (int, bool) {
	switch {
	case p == nil:
		fe.add("missing", fmt.Sprintf("%s is required: the share of the image's requests, from 0 to 100", field), loc...)
		return 0, false
	case math.IsNaN(*p) || *p < 0 || *p > 100:
		fe.add("value_error", fmt.Sprintf("%s must be from 0 to 100, got %v", field, *p), loc...)
		return 0, false
	}
	return int(math.Round(*p * 100)), true
}

func formatBP(bp int) string {
	return strconv.FormatFloat(float64(bp)/100, 'f', -1, 64)
}

// basisPoints is a percent of a normalised option in 0.01%.
func basisPoints(p *float64) int64 {
	if p == nil {
		return 0
	}
	return int64(math.Round(*p * 100))
}

// checkReferences reports what is wrong with the images spec's split and
// mirror name, in snap: each must be registered, the mirror may not be the
// image itself, and following splits from spec's image must not come back
// to it. It runs where a registration is applied, on the snapshot it
// changes; restores and other nodes' changes skip it (their order is not
// the order they were made in). loc prefixes the locations.
func checkReferences(snap *snapshot, spec *ServiceSpec, loc []any) fieldErrors {
	var fe fieldErrors
	at := func(field ...any) []any { return append(append([]any{}, loc...), field...) }
	id := spec.ImageID
	for i, t := range spec.Options.Split {
		if t.ImageID == id {
			fe.add("value_error", fmt.Sprintf("split[%d].image_id %d is the image itself: name another image", i, id), at("split", i, "image_id")...)
			continue
		}
		if snap.lookup(t.ImageID) == nil {
			fe.add("value_error", fmt.Sprintf("split[%d].image_id %d is not registered: register image %d first, or remove it from split", i, t.ImageID, t.ImageID), at("split", i, "image_id")...)
			continue
		}
		if path := splitPath(snap, t.ImageID, id); path != nil {
			fe.add("value_error", fmt.Sprintf("split[%d].image_id %d makes a cycle: %s; remove image %d from the split of image %d, or this entry",
				i, t.ImageID, formatPath(append([]int64{id}, path...)), id, path[len(path)-2]), at("split", i, "image_id")...)
		}
	}
	if m := spec.Options.Mirror; m != nil && m.ImageID > 0 {
		switch {
		case m.ImageID == id:
			fe.add("value_error", fmt.Sprintf("mirror.image_id %d is the image itself: mirror to another image", id), at("mirror", "image_id")...)
		case snap.lookup(m.ImageID) == nil:
			fe.add("value_error", fmt.Sprintf("mirror.image_id %d is not registered: register image %d first", m.ImageID, m.ImageID), at("mirror", "image_id")...)
		}
	}
	return fe
}

// splitPath returns a path of splits in snap from image from to image to
// (from first, to last), or nil when there is none.
func splitPath(snap *snapshot, from, to int64) []int64 {
	seen := map[int64]bool{}
	var walk func(id int64) []int64
	walk = func(id int64) []int64 {
		if id == to {
			return []int64{id}
		}
		if seen[id] {
			return nil
		}
		seen[id] = true
		svc := snap.lookup(id)
		if svc == nil {
			return nil
		}
		for _, t := range svc.Options.Split {
			if p := walk(t.ImageID); p != nil {
				return append([]int64{id}, p...)
			}
		}
		return nil
	}
	return walk(from)
}

func formatPath(ids []int64) string {
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(parts, " → ")
}

// Warning says which images the service's split and mirror name that are
// not registered (any more): their share stays on the image, or is not
// copied. "" when there is nothing to say.
func (s *Service) Warning() string {
	reg := s.State.reg
	if reg == nil || (len(s.Options.Split) == 0 && s.Options.Mirror == nil) {
		return ""
	}
	var parts []string
	for i, t := range s.Options.Split {
		if reg.Lookup(t.ImageID) == nil {
			parts = append(parts, fmt.Sprintf("split[%d] names image_id %d, which is not registered: its share stays on image_id %d; register image %d again or remove it from split", i, t.ImageID, s.ImageID, t.ImageID))
		}
	}
	if m := s.Options.Mirror; m != nil && reg.Lookup(m.ImageID) == nil {
		parts = append(parts, fmt.Sprintf("mirror names image_id %d, which is not registered: nothing is mirrored; register image %d again or remove the mirror", m.ImageID, m.ImageID))
	}
	return strings.Join(parts, "; ")
}

// splitWeights are the shares of a split in the rotation's units: index 0
// the image itself, i+1 Split[i]; divided by their greatest common
// divisor, so that 10% is one request in ten. nil without a split.
func splitWeights(split []SplitTarget) []int64 {
	if len(split) == 0 {
		return nil
	}
	w := make([]int64, len(split)+1)
	w[0] = splitScale
	for i, t := range split {
		w[i+1] = basisPoints(t.Percent)
		w[0] -= w[i+1]
	}
	w[0] = max(w[0], 0)
	var g int64
	for _, v := range w {
		g = gcd(g, v)
	}
	if g > 1 {
		for i := range w {
			w[i] /= g
		}
	}
	return w
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// splitRotation is the split's durable state, in the ServiceState of the
// source image: the current weights of the smooth weighted rotation
// (wrr.go's, over the image and its split targets), and the weights they
// are for. A version with other weights starts the rotation afresh.
type splitRotation struct {
	mu      sync.Mutex
	weights []int64
	current []int64

	mirrorSeq atomic.Uint64 // requests the mirror's share was taken of
}

// SplitTurn takes the split's next turn and returns the entry of
// Options.Split chosen, or -1 for the image itself. Bit i of skip takes
// Split[i] out of the turn (a request that says "never" for it). The
// rotation is nginx's smooth weighted round robin over the shares, so 10%
// is exactly one request in every ten, spread evenly; a request with only
// the image left to choose from takes no turn. It allocates nothing once
// the rotation has started.
func (s *Service) SplitTurn(skip uint32) int {
	if s.splitWeights == nil {
		return -1
	}
	w := *s.splitWeights
	rot := s.State.split.Load()
	if rot == nil {
		rot = loadOrStore(&s.State.split)
	}
	rot.mu.Lock()
	defer rot.mu.Unlock()
	if !slices.Equal(rot.weights, w) {
		rot.weights = w
		rot.current = make([]int64, len(w))
	}
	var total int64
	best := -1
	for i, wt := range w {
		if wt == 0 || (i > 0 && skip&(1<<(i-1)) != 0) {
			continue
		}
		rot.current[i] += wt
		total += wt
		if best < 0 || rot.current[i] > rot.current[best] {
			best = i
		}
	}
	if best < 0 {
		return -1
	}
	rot.current[best] -= total
	return best - 1
}

// MirrorTurn reports whether the next request of a mirrored method is
// copied: exactly percent of them are, spread evenly (1 in 4 for 25%).
func (s *Service) MirrorTurn() bool {
	m := s.Options.Mirror
	if m == nil {
		return false
	}
	bp := uint64(basisPoints(m.Percent))
	if bp >= splitScale {
		return true
	}
	n := loadOrStore(&s.State.split).mirrorSeq.Add(1) - 1
	return (n*bp)%splitScale+bp >= splitScale
}

// Mirrors reports whether the mirror copies requests of method.
func (m *Mirror) Mirrors(method string) bool {
	return slices.Contains(m.Methods, method)
}

// MirrorCounters count, on the image mirrored to, the copies other images'
// mirrors sent it, apart from its real traffic (they are neither requests
// nor usage of the image).
type MirrorCounters struct {
	// Requests counts the copies sent; Failures those that got no answer
	// or a 5xx.
	Requests, Failures atomic.Int64
	// Dropped counts copies not sent: max_in_flight copies were in flight
	// already, the mirror budget of all copies was spent, no container
	// could take one, or its body was not read whole by the primary
	// request.
	Dropped atomic.Int64
	// TooLarge counts requests not copied because their body is larger
	// than the mirror's max_body.
	TooLarge atomic.Int64
	// InFlight is the number of copies being collected or sent now.
	InFlight atomic.Int64
}

// TryBegin takes a place for a copy unless max copies are in flight; then
// it counts the copy as dropped and returns false.
func (m *MirrorCounters) TryBegin(max int) bool {
	if m.InFlight.Add(1) > int64(max) {
		m.InFlight.Add(-1)
		m.Dropped.Add(1)
		return false
	}
	return true
}

// Finish gives back the place of a copy begun with TryBegin: sent says it
// was sent, failed that it got no answer or a 5xx.
func (m *MirrorCounters) Finish(sent, failed bool) {
	m.InFlight.Add(-1)
	if sent {
		m.Requests.Add(1)
		if failed {
			m.Failures.Add(1)
		}
	}
}

// DefaultMirrorBudget is the memory all mirror copies in flight may hold
// together, across all images, unless the app says otherwise.
const DefaultMirrorBudget = 64 << 20

// MirrorCopyOverhead is what a copy in flight costs besides its body and
// headers: its goroutine, its request and the connection it holds to the
// target (buffers and the transport's two goroutines). TestMirrorBudget
// measures about 50 KiB a copy held by a target that never answers, the
// target's side of the connection included (it runs in the test's
// process).
const MirrorCopyOverhead = 48 << 10

// MirrorBudget bounds the memory mirror copies hold across all images: a
// copy takes its share (MirrorCopyOverhead, its headers, its body as it is
// read) before it holds it, and a copy whose share does not fit is dropped
// and counted in the target's Dropped. The zero value has no limit.
type MirrorBudget struct {
	limit, used atomic.Int64
}

// SetLimit sets the budget in bytes; 0 means no limit.
func (b *MirrorBudget) SetLimit(n int64) { b.limit.Store(n) }

// Take takes n bytes from the budget, and reports whether they fit.
func (b *MirrorBudget) Take(n int64) bool {
	limit := b.limit.Load()
	if limit <= 0 {
		b.used.Add(n)
		return true
	}
	for {
		u := b.used.Load()
		if u+n > limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// Give gives back n bytes taken with Take.
func (b *MirrorBudget) Give(n int64) { b.used.Add(-n) }

// Used is the bytes taken now.
func (b *MirrorBudget) Used() int64 { return b.used.Load() }

// Size is a number of bytes, written as a number or a string such as
// "64KiB" or "1MB" (KB is 1000 bytes, KiB 1024).
type Size int64

// MarshalJSON writes whole KiB and MiB as "64KiB", other sizes as a number.
func (s Size) MarshalJSON() ([]byte, error) {
	if s > 0 && (s%(1<<20) == 0 || s%(1<<10) == 0) {
		return json.Marshal(s.String())
	}
	return json.Marshal(int64(s))
}

// String writes whole MiB and KiB with their unit, anything else in bytes.
func (s Size) String() string {
	switch {
	case s > 0 && s%(1<<20) == 0:
		return strconv.FormatInt(int64(s)>>20, 10) + "MiB"
	case s > 0 && s%(1<<10) == 0:
		return strconv.FormatInt(int64(s)>>10, 10) + "KiB"
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}

// UnmarshalJSON reads a number of bytes or a size string; null leaves the
// size as it is.
func (s *Size) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	text := string(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &text); err != nil {
			return err
		}
	}
	v, err := ParseSize(text)
	if err != nil {
		return &json.UnmarshalTypeError{Value: "size " + string(b), Type: sizeType}
	}
	*s = Size(v)
	return nil
}

// ParseSize parses a size: a whole number of bytes, or one with a unit B,
// KB, KiB, MB, MiB, GB or GiB (any case; KB is 1000, KiB 1024).
func ParseSize(text string) (int64, error) {
	t := strings.TrimSpace(text)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil || i == 0 {
		return 0, fmt.Errorf("%q is not a size such as 64KiB or 65536", text)
	}
	mult := int64(1)
	switch strings.ToLower(strings.TrimSpace(t[i:])) {
	case "", "b":
	case "k", "kb":
		mult = 1000
	case "ki", "kib":
		mult = 1 << 10
	case "m", "mb":
		mult = 1000 * 1000
	case "mi", "mib":
		mult = 1 << 20
	case "g", "gb":
		mult = 1000 * 1000 * 1000
	case "gi", "gib":
		mult = 1 << 30
	default:
		return 0, fmt.Errorf("%q is not a size such as 64KiB or 65536", text)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is too large", text)
	}
	return n * mult, nil
}

var sizeType = reflect.TypeFor[Size]()
