package registry

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Paged lists: GET /services, /stats, /port-mappings and /usage take a
// limit, a cursor (after), filters (status, q) and, for /stats, an order
// (sort). The rules of those parameters, the selection of a page and the
// cursor live here; the API reads them from the query and writes the next
// page's URL.

// Sort is the order of a page of images.
type Sort string

// The orders of a page: by image_id (the default), or by a counter,
// largest first, ties broken by image_id.
const (
	SortImageID           Sort = "image_id"
	SortRequests          Sort = "requests"
	SortRequestsPerSecond Sort = "requests_per_second"
	SortFailedRequests    Sort = "failed_requests"
)

// Sorts is the one list of orders (parsing, messages, the OpenAPI test).
var Sorts = []Sort{SortRequests, SortRequestsPerSecond, SortFailedRequests, SortImageID}

// MaxPageLimit is the largest page a list answers.
const MaxPageLimit = 1000

// ListQuery selects images of a list: filters, an order and a page.
type ListQuery struct {
	// Limit is the number of images of the page, 1 to MaxPageLimit; 0:
	// every image that follows the cursor.
	Limit int
	// After is the position the page starts after; nil: the start.
	After *Cursor
	// Status keeps the images with a container in that status; "": all.
	Status Status
	// Prefix keeps the images whose image_name starts with it (case
	// sensitive); "": all.
	Prefix string
	// Sort is the order; "" is SortImageID.
	Sort Sort
}

// Paged reports whether the query has any parameter of a paged list:
// without one a list answers as the original service did.
func (q ListQuery) Paged() bool {
	return q.Limit != 0 || q.After != nil || q.Status != "" || q.Prefix != "" || q.Sort != ""
}

// byKey reports whether the query orders by a counter.
func (q ListQuery) byKey() bool { return q.Sort != "" && q.Sort != SortImageID }

// Cursor is a position in a list: the last image of the previous page and,
// in an order by a counter, that image's value when the page was made.
type Cursor struct {
	ImageID int64
	Key     float64 // the counter's value; 0 in the order by image_id
	keyed   bool
}

// String is the cursor as the after parameter writes it: the image_id, and
// in an order by a counter "IMAGE_ID:VALUE" (42:1523, 42:0.517).
func (c Cursor) String() string {
	if !c.keyed {
		return strconv.FormatInt(c.ImageID, 10)
	}
	return strconv.FormatInt(c.ImageID, 10) + ":" + strconv.FormatFloat(c.Key, 'f', -1, 64)
}

// ParseListQuery reads the parameters of a paged list from a query: limit,
// after, status, q and, when sortable, sort. An empty value is no value.
// Bad values are field errors at ["query", NAME] that say what is allowed.
func ParseListQuery(query map[string][]string, sortable bool) (ListQuery, error) {
	get := func(name string) string {
		if vs := query[name]; len(vs) > 0 {
			return vs[0]
		}
		return ""
	}
	var q ListQuery
	var fe fieldErrors
	if v := get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageLimit || v[0] == '+' {
			fe.add("int_parsing", fmt.Sprintf("limit must be an integer from 1 to %d, got %q", MaxPageLimit, v), "query", "limit")
		}
		q.Limit = n
	}
	if v := get("status"); v != "" {
		s, ok := ParseStatus(v)
		if !ok {
			fe.add("enum", fmt.Sprintf("status must be a container status (%s), got %q", StatusNames, v), "query", "status")
		}
		q.Status = s
	}
	q.Prefix = get("q")
	if len(q.Prefix) > MaxNameLength {
		fe.add("string_too_long", fmt.Sprintf("q is an image name prefix, at most %d characters, got %d", MaxNameLength, len(q.Prefix)), "query", "q")
	}
	if v := get("sort"); v != "" {
		if !sortable || !slices.Contains(Sorts, Sort(v)) {
			fe.add("enum", sortMsg(sortable, v), "query", "sort")
		} else {
			q.Sort = Sort(v)
		}
	}
	if v := get("after"); v != "" && !fe.has([]any{"query", "sort"}) {
		c, ok := parseCursor(v, q.byKey())
		if !ok {
			fe.add("cursor_parsing", cursorMsg(q.Sort, v), "query", "after")
		}
		q.After = c
	}
	if err := fe.err(); err != nil {
		return ListQuery{}, err
	}
	return q, nil
}

func sortMsg(sortable bool, v string) string {
	if !sortable {
		return fmt.Sprintf("this list takes no sort (only /stats does), got %q", v)
	}
	names := make([]string, len(Sorts))
	for i, s := range Sorts {
		names[i] = string(s)
	}
	return fmt.Sprintf("sort must be one of %s, got %q", strings.Join(names, ", "), v)
}

func cursorMsg(sort Sort, v string) string {
	if sort == "" || sort == SortImageID {
		return fmt.Sprintf("after must be an image_id (a positive integer: the page starts after it), got %q", v)
	}
	return fmt.Sprintf("with sort=%s, after must be IMAGE_ID:VALUE, the cursor the previous page's Link header "+
		"carries (e.g. 42:1523: the page starts after image 42, whose %s was 1523), got %q", sort, sort, v)
}

// parseCursor reads an after value: an image_id, followed in an order by a
// counter by ":" and the counter's value.
func parseCursor(v string, keyed bool) (*Cursor, bool) {
	idText, keyText, hasKey := strings.Cut(v, ":")
	if hasKey != keyed {
		return nil, false
	}
	id, err := strconv.ParseInt(idText, 10, 64)
	if err != nil || id <= 0 || idText[0] == '+' {
		return nil, false
	}
	c := &Cursor{ImageID: id, keyed: keyed}
	if keyed {
		k, err := strconv.ParseFloat(keyText, 64)
		if err != nil || k < 0 || math.IsInf(k, 0) || math.IsNaN(k) {
			return nil, false
		}
		c.Key = k
	}
	return c, true
}

// Match reports whether the service passes the query's filters.
func (q ListQuery) Match(s *Service) bool {
	if q.Prefix != "" && !strings.HasPrefix(s.ImageName, q.Prefix) {
		return false
	}
	if q.Status != "" {
		for _, c := range s.Containers {
			if c.Status == q.Status {
				return true
			}
		}
		return false
	}
	return true
}

// key is the service's value in an order by a counter: the value the
// statistics show.
func (s *Service) key(sort Sort) float64 {
	switch sort {
	case SortRequests:
		return float64(s.State.Requests.Load() + s.State.Usage.Base().Requests)
	case SortFailedRequests:
		return float64(s.State.Failures.Load() + s.State.Usage.Base().FailedRequests)
	case SortRequestsPerSecond:
		return s.State.Rate()
	}
	return 0
}

// entry is one image of a list being paged.
type entry struct {
	key float64
	id  int64
	svc *Service
}

// compare orders entries: by key, largest first, when keyed; then by
// image_id.
func compare(keyed bool, a, b entry) int {
	if keyed && a.key != b.key {
		if a.key > b.key {
			return -1
		}
		return 1
	}
	return cmpInt64(a.id, b.id)
}

// pager selects a page while the entries are offered one at a time: it
// keeps those after the cursor and, with a limit, only the best Limit+1 of
// them (a heap whose top is the worst kept), so a page of 100 among
// 100,000 images keeps 101 entries and sorts nothing else.
type pager struct {
	q     ListQuery
	keyed bool
	at    entry // the cursor
	es    []entry
}

func newPager(q ListQuery, capacity int) *pager {
	p := &pager{q: q, keyed: q.byKey()}
	if q.After != nil {
		p.at = entry{key: q.After.Key, id: q.After.ImageID}
	}
	if q.Limit > 0 {
		capacity = min(capacity, q.Limit+1)
	}
	p.es = make([]entry, 0, capacity)
	return p
}

// offer considers one entry.
func (p *pager) offer(e entry) {
	if p.q.After != nil && compare(p.keyed, e, p.at) <= 0 {
		return
	}
	if p.q.Limit <= 0 || len(p.es) <= p.q.Limit {
		p.es = append(p.es, e)
		if p.q.Limit > 0 {
			p.up(len(p.es) - 1)
		}
		return
	}
	if compare(p.keyed, e, p.es[0]) < 0 { // better than the worst kept
		p.es[0] = e
		p.down(0)
	}
}

// worse reports whether kept entry i comes after kept entry j.
func (p *pager) worse(i, j int) bool { return compare(p.keyed, p.es[i], p.es[j]) > 0 }

func (p *pager) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if !p.worse(i, parent) {
			return
		}
		p.es[i], p.es[parent] = p.es[parent], p.es[i]
		i = parent
	}
}

func (p *pager) down(i int) {
	for {
		worst, l := i, 2*i+1
		if l < len(p.es) && p.worse(l, worst) {
			worst = l
		}
		if r := l + 1; r < len(p.es) && p.worse(r, worst) {
			worst = r
		}
		if worst == i {
			return
		}
		p.es[i], p.es[worst] = p.es[worst], p.es[i]
		i = worst
	}
}

// page returns the page in order, and the cursor of its last entry when
// more entries follow it (nil: it is the last page).
func (p *pager) page() ([]entry, *Cursor) {
	es := p.es
	slices.SortFunc(es, func(a, b entry) int { return compare(p.keyed, a, b) })
	if p.q.Limit <= 0 || len(es) <= p.q.Limit {
		return es, nil
	}
	es = es[:p.q.Limit]
	last := es[len(es)-1]
	return es, &Cursor{ImageID: last.id, Key: last.key, keyed: p.keyed}
}

// Page returns the services the query selects, in its order, and the
// cursor of the next page (nil: none follows). It reads one snapshot: a
// page is consistent, and an image removed since the previous page is
// simply not there (the cursor is a position, not an image that must
// exist).
func (r *Registry) Page(q ListQuery) ([]*Service, *Cursor) {
	return r.pageOf(q, nil)
}

// pageOf is Page over the services that also pass keep (nil: all).
func (r *Registry) pageOf(q ListQuery, keep func(*Service) bool) ([]*Service, *Cursor) {
	s := r.snap.Load()
	p := newPager(q, s.count)
	for _, shard := range s.shards {
		for _, svc := range shard {
			if (keep == nil || keep(svc)) && q.Match(svc) {
				p.offer(entry{key: svc.key(q.Sort), id: svc.ImageID, svc: svc})
			}
		}
	}
	page, next := p.page()
	out := make([]*Service, len(page))
	for i, e := range page {
		out[i] = e.svc
	}
	return out, next
}

// PortMappingsPage returns the port mappings of the images the query
// selects (an image has at most one external port), ordered by image_id,
// and the cursor of the next page.
func (r *Registry) PortMappingsPage(q ListQuery) ([]PortMapping, *Cursor) {
	svcs, next := r.pageOf(q, func(s *Service) bool { return s.ExternalPort != 0 })
	out := make([]PortMapping, len(svcs))
	for i, svc := range svcs {
		out[i] = PortMapping{ExternalPort: svc.ExternalPort, ImageID: svc.ImageID, ImageName: svc.ImageName,
			ContainerCount: len(svc.Containers), TotalRequests: svc.State.Requests.Load()}
	}
	return out, next
}

// PageIDs pages a list of image_ids that is not the registry's (the usage
// ledger's images, removed ones included), ordered by image_id. The
// filters read the images' current services: with a filter, an image that
// is not registered any more is left out.
func (r *Registry) PageIDs(ids []int64, q ListQuery) ([]int64, *Cursor) {
	s := r.snap.Load()
	filtered := q.Status != "" || q.Prefix != ""
	q.Sort = "" // only /stats sorts
	p := newPager(q, len(ids))
	for _, id := range ids {
		if filtered {
			if svc := s.lookup(id); svc == nil || !q.Match(svc) {
				continue
			}
		}
		p.offer(entry{id: id})
	}
	page, next := p.page()
	out := make([]int64, len(page))
	for i, e := range page {
		out[i] = e.id
	}
	return out, next
}

// PortMappingsCount is the number of mapped external ports.
func (r *Registry) PortMappingsCount() int { return len(r.snap.Load().ports) }

// Totals are the registry-wide figures of the statistics, kept on every
// page of a paged /stats.
type Totals struct {
	Services, Containers, HealthyContainers int
	// ContainersByStatus counts the containers in each status, every
	// status present.
	ContainersByStatus                               map[Status]int
	TotalRequests, FailedRequests, ActiveConnections int64
	RequestsPerSecond                                float64
	PortMappings                                     int
}

// Totals adds up the whole registry from one snapshot: per image its
// counters (a few atomics); the counts of containers are the snapshot's.
func (r *Registry) Totals() Totals {
	s := r.snap.Load()
	t := s.totals()
	for _, shard := range s.shards {
		for _, svc := range shard {
			t.add(svc)
		}
	}
	t.round()
	return t
}

// PageWithTotals is Page and Totals in one pass over one snapshot (a
// paged /stats).
func (r *Registry) PageWithTotals(q ListQuery) ([]*Service, *Cursor, Totals) {
	s := r.snap.Load()
	t := s.totals()
	p := newPager(q, s.count)
	for _, shard := range s.shards {
		for _, svc := range shard {
			t.add(svc)
			if q.Match(svc) {
				p.offer(entry{key: svc.key(q.Sort), id: svc.ImageID, svc: svc})
			}
		}
	}
	t.round()
	page, next := p.page()
	out := make([]*Service, len(page))
	for i, e := range page {
		out[i] = e.svc
	}
	return out, next, t
}

// totals are the snapshot's counts, before the counters are added.
func (s *snapshot) totals() Totals {
	t := Totals{Services: s.count, Containers: s.total, ContainersByStatus: make(map[Status]int, len(Statuses)),
		PortMappings: len(s.ports)}
	for i, st := range Statuses {
		t.ContainersByStatus[st] = s.byStatus[i]
	}
	t.HealthyContainers = s.byStatus[statusIndex(StatusHealthy)]
	return t
}

// add adds the counters of one service.
func (t *Totals) add(svc *Service) {
	st := svc.State
	base := st.Usage.Base()
	t.TotalRequests += st.Requests.Load() + base.Requests
	t.FailedRequests += st.Failures.Load() + base.FailedRequests
	t.ActiveConnections += st.InFlight.Load()
	t.RequestsPerSecond += st.Rate()
}

// round rounds the rate as the API shows rates.
func (t *Totals) round() { t.RequestsPerSecond = math.Round(t.RequestsPerSecond*1000) / 1000 }

// numStatuses is len(Statuses), for arrays counted by status.
const numStatuses = 5

// statusIndex is the status's index in Statuses.
func statusIndex(s Status) int {
	switch s {
	case StatusHealthy:
		return 0
	case StatusUnhealthy:
		return 1
	case StatusStarting:
		return 2
	case StatusDraining:
		return 3
	}
	return 4 // StatusUnknown
}

// countStatuses adds (sign 1) or takes away (-1) the containers of svc in
// the snapshot's counts by status.
func (snap *snapshot) countStatuses(svc *Service, sign int) {
	for _, c := range svc.Containers {
		snap.byStatus[statusIndex(c.Status)] += sign
	}
}

// CountByStatus counts the containers of the services in each status;
// every status is present, with 0 when no container has it.
func CountByStatus(svcs []*Service) map[Status]int {
	m := make(map[Status]int, len(Statuses))
	for _, st := range Statuses {
		m[st] = 0
	}
	for _, svc := range svcs {
		for _, c := range svc.Containers {
			m[c.Status]++
		}
	}
	return m
}
