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

// page keeps the entries after the cursor, sorts them and cuts the page:
// next is the cursor of the page's last entry when more entries follow it.
func (q ListQuery) page(es []entry) (page []entry, next *Cursor) {
	keyed := q.byKey()
	if q.After != nil {
		at := entry{key: q.After.Key, id: q.After.ImageID}
		es = slices.DeleteFunc(es, func(e entry) bool { return compare(keyed, e, at) <= 0 })
	}
	slices.SortFunc(es, func(a, b entry) int { return compare(keyed, a, b) })
	if q.Limit <= 0 || len(es) <= q.Limit {
		return es, nil
	}
	es = es[:q.Limit]
	last := es[len(es)-1]
	return es, &Cursor{ImageID: last.id, Key: last.key, keyed: keyed}
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
	es := make([]entry, 0, min(s.count, 1024))
	for _, shard := range s.shards {
		for _, svc := range shard {
			if (keep == nil || keep(svc)) && q.Match(svc) {
				es = append(es, entry{key: svc.key(q.Sort), id: svc.ImageID, svc: svc})
			}
		}
	}
	page, next := q.page(es)
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
	es := make([]entry, 0, len(ids))
	for _, id := range ids {
		if filtered {
			if svc := s.lookup(id); svc == nil || !q.Match(svc) {
				continue
			}
		}
		es = append(es, entry{id: id})
	}
	q.Sort = "" // only /stats sorts
	page, next := q.page(es)
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
// counters (a few atomics) and its containers' statuses, nothing of the
// containers' statistics.
func (r *Registry) Totals() Totals {
	s := r.snap.Load()
	t := Totals{Services: s.count, ContainersByStatus: CountByStatus(nil), PortMappings: len(s.ports)}
	by := make([]int, len(Statuses)+1) // by index in Statuses
	for _, shard := range s.shards {
		for _, svc := range shard {
			t.Containers += len(svc.Containers)
			for _, c := range svc.Containers {
				by[statusIndex(c.Status)]++
			}
			st := svc.State
			base := st.Usage.Base()
			t.TotalRequests += st.Requests.Load() + base.Requests
			t.FailedRequests += st.Failures.Load() + base.FailedRequests
			t.ActiveConnections += st.InFlight.Load()
			t.RequestsPerSecond += st.Rate()
		}
	}
	for i, st := range Statuses {
		t.ContainersByStatus[st] = by[i]
	}
	t.HealthyContainers = by[statusIndex(StatusHealthy)]
	t.RequestsPerSecond = math.Round(t.RequestsPerSecond*1000) / 1000
	return t
}

// statusIndex is the status's index in Statuses (past the end: not one).
func statusIndex(s Status) int {
	for i, st := range Statuses {
		if st == s {
			return i
		}
	}
	return len(Statuses)
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
