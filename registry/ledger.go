package registry

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// The usage ledger: what each image used, per interval (a minute by
// default), kept in the store beside the registry so that it survives
// restarts and, with a shared store, adds up over every node.
//
// The request path only adds to atomics (UsageCounter). Every flush
// interval the ledger collects what the counters gained since the last
// collection into the bucket of the current interval and commits, in one
// transaction of this node's own keys, the buckets it changed and the
// node's totals. A node writes only its own buckets: no two nodes ever
// write one key, so no count is lost to concurrent writers. What a crash
// can lose is what was counted since the last successful flush.

// UsageBucket is one node's usage in one interval, per image.
type UsageBucket struct {
	Start  time.Time       // the interval's start, UTC
	Node   string          // the node that counted it
	Images map[int64]Usage // by image_id
}

// UsageStore keeps the usage ledger. Stores implement it beside
// RecordStore.
type UsageStore interface {
	// CommitUsage writes, in one transaction, the node's buckets (each
	// replaces the node's bucket of the same start) and its totals.
	CommitUsage(ctx context.Context, node string, buckets []UsageBucket, totals map[int64]Usage) error
	// LoadUsage returns every node's buckets that start in [from, to).
	LoadUsage(ctx context.Context, from, to time.Time) ([]UsageBucket, error)
	// LoadUsageTotals returns the node's totals (nil: none stored).
	LoadUsageTotals(ctx context.Context, node string) (map[int64]Usage, error)
	// CompactUsage deletes the node's buckets that start before before.
	CompactUsage(ctx context.Context, node string, before time.Time) error
}

// Ledger collects the registry's usage counters into buckets and keeps
// them in a UsageStore.
type Ledger struct {
	reg       *Registry
	store     UsageStore
	node      string
	interval  time.Duration
	retention time.Duration

	mu        sync.Mutex
	collected map[*UsageCounter]Usage   // each counter's Counted() at the last collection
	buckets   map[int64]map[int64]Usage // this node's buckets not yet known stored, by start (unix ns), then image
	dirty     map[int64]bool            // starts changed since the last successful flush
	totals    map[int64]Usage           // this node's totals: the stored ones plus what was collected
	compacted time.Time                 // when the store was last compacted
}

// NewLedger returns the ledger of reg on store, for this node. It loads
// the node's totals (the counters go on from them) and the bucket of the
// current interval (the next flushes add to it).
func NewLedger(ctx context.Context, reg *Registry, store UsageStore, node string, interval, retention time.Duration) (*Ledger, error) {
	l := &Ledger{reg: reg, store: store, node: node, interval: interval, retention: retention,
		collected: map[*UsageCounter]Usage{}, buckets: map[int64]map[int64]Usage{}, dirty: map[int64]bool{}}
	totals, err := store.LoadUsageTotals(ctx, node)
	if err != nil {
		return nil, fmt.Errorf("loading the usage totals: %w", err)
	}
	l.totals = maps.Clone(totals)
	if l.totals == nil {
		l.totals = map[int64]Usage{}
	}
	reg.SetUsageBase(totals)
	start := l.start(now())
	current, err := store.LoadUsage(ctx, start, start.Add(interval))
	if err != nil {
		return nil, fmt.Errorf("loading the current usage bucket: %w", err)
	}
	for _, b := range current {
		if b.Node == node {
			l.buckets[start.UnixNano()] = maps.Clone(b.Images)
		}
	}
	return l, nil
}

// Interval returns the length of a bucket.
func (l *Ledger) Interval() time.Duration { return l.interval }

// start returns the start of the interval t falls in.
func (l *Ledger) start(t time.Time) time.Time { return t.UTC().Truncate(l.interval) }

// collect moves what the counters gained since the last collection into
// the bucket of the interval t falls in (l.mu held).
func (l *Ledger) collect(t time.Time) {
	start := l.start(t).UnixNano()
	for id, u := range l.reg.UsageCounters() {
		c := u.Counted()
		d := c.Sub(l.collected[u])
		if d.IsZero() {
			continue
		}
		l.collected[u] = c
		b := l.buckets[start]
		if b == nil {
			b = map[int64]Usage{}
			l.buckets[start] = b
		}
		b[id] = b[id].Add(d)
		l.totals[id] = l.totals[id].Add(d)
		l.dirty[start] = true
	}
}

// Flush collects and commits the changed buckets and the totals. On an
// error nothing is forgotten: the next flush writes them again.
func (l *Ledger) Flush(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := now()
	l.collect(t)
	current := l.start(t).UnixNano()
	var out []UsageBucket
	for start := range l.dirty {
		out = append(out, UsageBucket{Start: time.Unix(0, start).UTC(), Node: l.node, Images: maps.Clone(l.buckets[start])})
	}
	if len(out) > 0 {
		slices.SortFunc(out, func(a, b UsageBucket) int { return a.Start.Compare(b.Start) })
		if err := l.store.CommitUsage(ctx, l.node, out, maps.Clone(l.totals)); err != nil {
			return fmt.Errorf("flushing the usage ledger: %w", err)
		}
	}
	clear(l.dirty)
	for start := range l.buckets {
		if start < current { // closed and stored: the store has it now
			delete(l.buckets, start)
		}
	}
	if l.retention > 0 && t.Sub(l.compacted) >= time.Hour {
		if err := l.store.CompactUsage(ctx, l.node, t.Add(-l.retention)); err != nil {
			return fmt.Errorf("compacting the usage ledger: %w", err)
		}
		l.compacted = t
	}
	return nil
}

// UsageQuery selects usage: one image (0: every image), the buckets that
// start in [From, To), summed per Step (a multiple of the interval).
type UsageQuery struct {
	ImageID  int64
	From, To time.Time
	Step     time.Duration
	// List pages the images (page.go); zero: every image.
	List ListQuery
}

// UsageReport is the answer of GET /api/v1/usage.
type UsageReport struct {
	From   time.Time    `json:"from"`
	To     time.Time    `json:"to"`
	Step   string       `json:"step"`
	Images []ImageUsage `json:"images"`

	next *Cursor // the next page's cursor; nil: none
}

// NextPage is the cursor of the page after this one; nil when this is the
// last (or the query was not paged).
func (r *UsageReport) NextPage() *Cursor { return r.next }

// ImageUsage is one image's usage over the range, and per step.
type ImageUsage struct {
	ImageID int64 `json:"image_id"`
	UsageView
	Buckets []BucketUsage `json:"buckets"`
}

// BucketUsage is the usage of one step.
type BucketUsage struct {
	Start time.Time `json:"start"`
	UsageView
}

// UsageView is Usage as the API shows it, request-seconds in seconds.
type UsageView struct {
	Requests       int64   `json:"requests"`
	FailedRequests int64   `json:"failed_requests"`
	BytesIn        int64   `json:"bytes_in"`
	BytesOut       int64   `json:"bytes_out"`
	RequestSeconds float64 `json:"request_seconds"`
}

func (u Usage) view() UsageView {
	return UsageView{Requests: u.Requests, FailedRequests: u.FailedRequests, BytesIn: u.BytesIn, BytesOut: u.BytesOut,
		RequestSeconds: float64(u.RequestNanos) / 1e9}
}

// Query answers a usage query from every node's stored buckets, this
// node's not yet flushed counts included. The range is aligned to whole
// steps: From down, To up. A bucket counts in the range when it starts in
// it, so adjacent ranges add up exactly.
func (l *Ledger) Query(ctx context.Context, q UsageQuery) (*UsageReport, error) {
	if q.Step <= 0 || q.Step%l.interval != 0 {
		return nil, invalid("step %s must be a multiple of the ledger's interval %s", q.Step, l.interval)
	}
	from, to := q.From.UTC().Truncate(q.Step), q.To.UTC()
	if t := to.Truncate(q.Step); t.Before(to) {
		to = t.Add(q.Step)
	}
	if !from.Before(to) {
		return nil, invalid("from (%s) must be before to (%s)", q.From.Format(time.RFC3339), q.To.Format(time.RFC3339))
	}
	if from.Before(UsageEarliest) || to.After(UsageLatest) {
		return nil, invalid("the range %s to %s, aligned to whole steps of %s, must lie between %s and %s: "+
			"pick from and to within it, and a step shorter than the range", from.Format(time.RFC3339),
			to.Format(time.RFC3339), q.Step, UsageEarliest.Format(time.RFC3339), UsageLatest.Format(time.RFC3339))
	}
	if steps := to.Sub(from) / q.Step; steps > maxUsageSteps {
		return nil, invalid("%d steps of %s from %s to %s: at most %d; use a longer step", steps, q.Step,
			from.Format(time.RFC3339), to.Format(time.RFC3339), maxUsageSteps)
	}
	stored, err := l.store.LoadUsage(ctx, from, to)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.collect(now())
	mine := make(map[int64]map[int64]Usage, len(l.buckets))
	for start, b := range l.buckets {
		mine[start] = maps.Clone(b)
	}
	l.mu.Unlock()

	sums := map[int64]map[int64]Usage{} // image → step start → usage
	add := func(start time.Time, images map[int64]Usage) {
		if start.Before(from) || !start.Before(to) {
			return
		}
		step := start.Truncate(q.Step).UnixNano()
		for id, u := range images {
			if q.ImageID != 0 && id != q.ImageID {
				continue
			}
			if sums[id] == nil {
				sums[id] = map[int64]Usage{}
			}
			sums[id][step] = sums[id][step].Add(u)
		}
	}
	for _, b := range stored {
		if b.Node == l.node {
			if _, newer := mine[b.Start.UnixNano()]; newer {
				continue // this node's own bucket is more recent in memory
			}
		}
		add(b.Start, b.Images)
	}
	for start, images := range mine {
		add(time.Unix(0, start).UTC(), images)
	}

	rep := &UsageReport{From: from, To: to, Step: q.Step.String(), Images: []ImageUsage{}}
	ids := slices.Sorted(maps.Keys(sums))
	if q.List.Paged() {
		ids, rep.next = l.reg.PageIDs(ids, q.List)
	}
	for _, id := range ids {
		iu := ImageUsage{ImageID: id, Buckets: []BucketUsage{}}
		var total Usage
		for _, step := range slices.Sorted(maps.Keys(sums[id])) {
			u := sums[id][step]
			total = total.Add(u)
			iu.Buckets = append(iu.Buckets, BucketUsage{Start: time.Unix(0, step).UTC(), UsageView: u.view()})
		}
		iu.UsageView = total.view()
		rep.Images = append(rep.Images, iu)
	}
	return rep, nil
}

// maxUsageSteps bounds the buckets of one answer.
const maxUsageSteps = 10000

// The range a usage query may cover, once aligned to whole steps: bucket
// starts are kept in nanoseconds since 1970 (an int64 reaches 2262), and
// an answer's times must be RFC 3339 (years up to 9999). Step alignment
// counts from year 1, so a long step can move from far back.
var (
	UsageEarliest = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	UsageLatest   = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

// MemoryUsage is the usage ledger's store when the registry is kept in
// memory (store memory): it lives as long as the process.
type MemoryUsage struct {
	mu      sync.Mutex
	buckets map[string]map[int64]map[int64]Usage // node → start → image → usage
	totals  map[string]map[int64]Usage
}

// CommitUsage implements UsageStore.
func (m *MemoryUsage) CommitUsage(_ context.Context, node string, buckets []UsageBucket, totals map[int64]Usage) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.buckets == nil {
		m.buckets, m.totals = map[string]map[int64]map[int64]Usage{}, map[string]map[int64]Usage{}
	}
	if m.buckets[node] == nil {
		m.buckets[node] = map[int64]map[int64]Usage{}
	}
	for _, b := range buckets {
		m.buckets[node][b.Start.UnixNano()] = maps.Clone(b.Images)
	}
	m.totals[node] = maps.Clone(totals)
	return nil
}

// LoadUsage implements UsageStore.
func (m *MemoryUsage) LoadUsage(_ context.Context, from, to time.Time) ([]UsageBucket, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []UsageBucket
	for node, byStart := range m.buckets {
		for start, images := range byStart {
			t := time.Unix(0, start).UTC()
			if !t.Before(from) && t.Before(to) {
				out = append(out, UsageBucket{Start: t, Node: node, Images: maps.Clone(images)})
			}
		}
	}
	return out, nil
}

// LoadUsageTotals implements UsageStore.
func (m *MemoryUsage) LoadUsageTotals(_ context.Context, node string) (map[int64]Usage, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.totals[node]), nil
}

// CompactUsage implements UsageStore.
func (m *MemoryUsage) CompactUsage(_ context.Context, node string, before time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for start := range m.buckets[node] {
		if start < before.UnixNano() {
			delete(m.buckets[node], start)
		}
	}
	return nil
}
