package registry

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseListQuery(t *testing.T) {
	for _, tc := range []struct {
		name     string
		query    map[string][]string
		sortable bool
		want     ListQuery
		// wantErr: the field of the one error, and words of its message
		wantErr, msg string
	}{
		{name: "none", want: ListQuery{}},
		{name: "empty values are none", query: map[string][]string{"limit": {""}, "after": {""}, "status": {""}, "q": {""}, "sort": {""}}},
		{name: "all", sortable: true,
			query: map[string][]string{"limit": {"100"}, "after": {"42:1523"}, "status": {"draining"}, "q": {"api"}, "sort": {"requests"}},
			want:  ListQuery{Limit: 100, After: &Cursor{ImageID: 42, Key: 1523, keyed: true}, Status: StatusDraining, Prefix: "api", Sort: SortRequests}},
		{name: "after in the default order", query: map[string][]string{"after": {"7"}, "limit": {"1"}},
			want: ListQuery{Limit: 1, After: &Cursor{ImageID: 7}}},
		{name: "after with sort=image_id", sortable: true, query: map[string][]string{"after": {"7"}, "sort": {"image_id"}},
			want: ListQuery{After: &Cursor{ImageID: 7}, Sort: SortImageID}},
		{name: "a fractional key", sortable: true, query: map[string][]string{"after": {"7:0.517"}, "sort": {"requests_per_second"}},
			want: ListQuery{After: &Cursor{ImageID: 7, Key: 0.517, keyed: true}, Sort: SortRequestsPerSecond}},
		{name: "limit 1000", query: map[string][]string{"limit": {"1000"}}, want: ListQuery{Limit: 1000}},
		{name: "limit 0", query: map[string][]string{"limit": {"0"}}, wantErr: "limit", msg: "from 1 to 1000"},
		{name: "limit 1001", query: map[string][]string{"limit": {"1001"}}, wantErr: "limit", msg: "from 1 to 1000"},
		{name: "limit text", query: map[string][]string{"limit": {"ten"}}, wantErr: "limit", msg: `got "ten"`},
		{name: "limit +5", query: map[string][]string{"limit": {"+5"}}, wantErr: "limit", msg: "integer"},
		{name: "status unknown", query: map[string][]string{"status": {"sick"}}, wantErr: "status", msg: "healthy, unhealthy, starting, draining or unknown"},
		{name: "sort unknown", sortable: true, query: map[string][]string{"sort": {"name"}}, wantErr: "sort", msg: "requests, requests_per_second, failed_requests, image_id"},
		{name: "sort where none is taken", query: map[string][]string{"sort": {"requests"}}, wantErr: "sort", msg: "only /stats"},
		{name: "after zero", query: map[string][]string{"after": {"0"}}, wantErr: "after", msg: "positive integer"},
		{name: "after text", query: map[string][]string{"after": {"x"}}, wantErr: "after", msg: "image_id"},
		{name: "after with a key in the default order", query: map[string][]string{"after": {"7:3"}}, wantErr: "after", msg: "image_id"},
		{name: "after without a key in an order by a counter", sortable: true,
			query: map[string][]string{"after": {"7"}, "sort": {"failed_requests"}}, wantErr: "after", msg: "IMAGE_ID:VALUE"},
		{name: "after with a bad key", sortable: true,
			query: map[string][]string{"after": {"7:NaN"}, "sort": {"requests"}}, wantErr: "after", msg: "Link header"},
		{name: "after with a negative key", sortable: true,
			query: map[string][]string{"after": {"7:-1"}, "sort": {"requests"}}, wantErr: "after", msg: "IMAGE_ID:VALUE"},
		{name: "q too long", query: map[string][]string{"q": {strings.Repeat("a", MaxNameLength+1)}}, wantErr: "q", msg: "at most 255"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseListQuery(tc.query, tc.sortable)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("got %+v, want %+v", got, tc.want)
				}
				return
			}
			wantKind(t, err, KindInvalid)
			fs := err.(*Error).Fields
			if len(fs) != 1 || !reflect.DeepEqual(fs[0].Loc, []any{"query", tc.wantErr}) || !strings.Contains(fs[0].Msg, tc.msg) {
				t.Fatalf("errors %+v, want one at [query %s] saying %q", fs, tc.wantErr, tc.msg)
			}
		})
	}
}

func TestCursorRoundTrip(t *testing.T) {
	for _, c := range []Cursor{{ImageID: 9}, {ImageID: 9, Key: 0, keyed: true}, {ImageID: 1, Key: 123456789012, keyed: true},
		{ImageID: 3, Key: 0.517, keyed: true}} {
		got, ok := parseCursor(c.String(), c.keyed)
		if !ok || *got != c {
			t.Errorf("%+v → %q → %+v, %v", c, c.String(), got, ok)
		}
	}
}

// pagingRegistry holds images 1..n named "api-N" (odd) and "web-N"
// (even); image N has N%4 containers draining besides one healthy one.
func pagingRegistry(t *testing.T, n int) *Registry {
	t.Helper()
	r := newTestRegistry(t, Options{})
	for id := int64(1); id <= int64(n); id++ {
		cs := []ContainerSpec{ctr("h", 1000)}
		for j := range id % 4 {
			c := ctr(fmt.Sprintf("d%d", j), 2000+int(j))
			c.Status = StatusDraining
			cs = append(cs, c)
		}
		name := "web"
		if id%2 == 1 {
			name = "api"
		}
		mustRegister(t, r, ServiceSpec{ImageID: id, ImageName: fmt.Sprintf("%s-%d", name, id), Containers: cs})
	}
	return r
}

func serviceIDs(svcs []*Service) []int64 {
	out := make([]int64, len(svcs))
	for i, s := range svcs {
		out[i] = s.ImageID
	}
	return out
}

// walk follows the cursors from the first page to the last and returns
// every image_id in the order seen; between pages it calls between.
func walk(t *testing.T, r *Registry, q ListQuery, between func(page int)) []int64 {
	t.Helper()
	var seen []int64
	for page := 0; ; page++ {
		if page > 1000 {
			t.Fatal("the walk does not end")
		}
		svcs, next := r.Page(q)
		if q.Limit > 0 && len(svcs) > q.Limit {
			t.Fatalf("page %d has %d images, limit %d", page, len(svcs), q.Limit)
		}
		seen = append(seen, serviceIDs(svcs)...)
		if next == nil {
			return seen
		}
		if len(svcs) == 0 || next.ImageID != svcs[len(svcs)-1].ImageID {
			t.Fatalf("page %d: next %+v is not its last image %v", page, next, serviceIDs(svcs))
		}
		if between != nil {
			between(page)
		}
		c, ok := parseCursor(next.String(), q.byKey()) // as a client sends it back
		if !ok {
			t.Fatalf("cursor %q does not parse", next.String())
		}
		q.After = c
	}
}

func seq(from, to int64, keep func(int64) bool) []int64 {
	var out []int64
	for id := from; id <= to; id++ {
		if keep == nil || keep(id) {
			out = append(out, id)
		}
	}
	return out
}

func TestPageWalks(t *testing.T) {
	r := pagingRegistry(t, 23)
	odd := func(id int64) bool { return id%2 == 1 }
	for _, tc := range []struct {
		name string
		q    ListQuery
		want []int64
	}{
		{"all, one page", ListQuery{}, seq(1, 23, nil)},
		{"pages of 5", ListQuery{Limit: 5}, seq(1, 23, nil)},
		{"pages of 1", ListQuery{Limit: 1}, seq(1, 23, nil)},
		{"the last page exactly full", ListQuery{Limit: 23}, seq(1, 23, nil)},
		{"a page larger than the list", ListQuery{Limit: 1000}, seq(1, 23, nil)},
		{"after the middle", ListQuery{Limit: 4, After: &Cursor{ImageID: 10}}, seq(11, 23, nil)},
		{"after an id that is not registered", ListQuery{Limit: 4, After: &Cursor{ImageID: 500}}, nil},
		{"name prefix", ListQuery{Limit: 3, Prefix: "api-"}, seq(1, 23, odd)},
		{"name prefix, longer", ListQuery{Limit: 3, Prefix: "api-1"}, []int64{1, 11, 13, 15, 17, 19}},
		{"prefix is case sensitive", ListQuery{Prefix: "API"}, nil},
		{"status draining", ListQuery{Limit: 4, Status: StatusDraining}, seq(1, 23, func(id int64) bool { return id%4 != 0 })},
		{"status healthy: every image", ListQuery{Limit: 7, Status: StatusHealthy}, seq(1, 23, nil)},
		{"status nobody has", ListQuery{Limit: 7, Status: StatusStarting}, nil},
		{"both filters", ListQuery{Limit: 2, Status: StatusDraining, Prefix: "web"}, seq(1, 23, func(id int64) bool { return id%2 == 0 && id%4 != 0 })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := walk(t, r, tc.q, nil)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("walk saw %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPageEmptyRegistry(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svcs, next := r.Page(ListQuery{Limit: 10})
	if len(svcs) != 0 || next != nil {
		t.Fatalf("page %v, next %+v", serviceIDs(svcs), next)
	}
	if tot := r.Totals(); tot.Services != 0 || len(tot.ContainersByStatus) != len(Statuses) {
		t.Fatalf("totals %+v", tot)
	}
}

// TestPageImageRemovedBetweenPages: the cursor is a position, not an image
// that must exist; an image removed (or added) behind the cursor changes
// nothing, one removed ahead of it is simply not seen.
func TestPageImageRemovedBetweenPages(t *testing.T) {
	r := pagingRegistry(t, 12)
	got := walk(t, r, ListQuery{Limit: 4}, func(page int) {
		if page == 0 {
			mustRemove(t, r, 4) // the first page's last image: the cursor
			mustRemove(t, r, 6) // ahead of the cursor
			mustRemove(t, r, 2) // behind it
			mustRegister(t, r, svcSpec(30, ctr("a", 1)))
		}
	})
	if want := []int64{1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 30}; !slices.Equal(got, want) {
		t.Fatalf("walk saw %v, want %v", got, want)
	}
}

func mustRemove(t *testing.T, r *Registry, id int64) {
	t.Helper()
	if _, err := r.Remove(id); err != nil {
		t.Fatal(err)
	}
}

func TestPageSorted(t *testing.T) {
	r := pagingRegistry(t, 10)
	// requests: 3 images tie at 50, 2 at 7, the rest 0; failures: image
	// N has N%3 failures
	reqs := map[int64]int64{2: 50, 9: 50, 5: 50, 1: 7, 10: 7}
	for _, svc := range r.Services() {
		svc.State.Requests.Add(reqs[svc.ImageID])
		svc.State.Failures.Add(svc.ImageID % 3)
	}
	for _, tc := range []struct {
		name string
		q    ListQuery
		want []int64
	}{
		{"requests, ties by image_id", ListQuery{Sort: SortRequests}, []int64{2, 5, 9, 1, 10, 3, 4, 6, 7, 8}},
		{"requests, pages of 2 split the ties", ListQuery{Sort: SortRequests, Limit: 2}, []int64{2, 5, 9, 1, 10, 3, 4, 6, 7, 8}},
		{"requests, pages of 1", ListQuery{Sort: SortRequests, Limit: 1}, []int64{2, 5, 9, 1, 10, 3, 4, 6, 7, 8}},
		{"requests, filtered", ListQuery{Sort: SortRequests, Limit: 2, Prefix: "web"}, []int64{2, 10, 4, 6, 8}},
		{"requests, after a cursor", ListQuery{Sort: SortRequests, Limit: 3, After: &Cursor{ImageID: 5, Key: 50, keyed: true}},
			[]int64{9, 1, 10, 3, 4, 6, 7, 8}},
		{"requests, after a value nobody has", ListQuery{Sort: SortRequests, Limit: 3, After: &Cursor{ImageID: 1, Key: 20, keyed: true}},
			[]int64{1, 10, 3, 4, 6, 7, 8}},
		{"failed_requests", ListQuery{Sort: SortFailedRequests, Limit: 4}, []int64{2, 5, 8, 1, 4, 7, 10, 3, 6, 9}},
		{"image_id", ListQuery{Sort: SortImageID, Limit: 4}, seq(1, 10, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := walk(t, r, tc.q, nil); !slices.Equal(got, tc.want) {
				t.Fatalf("walk saw %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPageSortedByRate(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	now = func() time.Time { return clock }
	t.Cleanup(func() { now = time.Now })
	r := pagingRegistry(t, 6)
	for _, svc := range r.Services() {
		for range svc.ImageID % 3 { // rates: 1, 2, 0, 1, 2, 0 requests per minute
			svc.State.Refuse(503, true)
		}
	}
	got := walk(t, r, ListQuery{Sort: SortRequestsPerSecond, Limit: 2}, nil)
	if want := []int64{2, 5, 1, 4, 3, 6}; !slices.Equal(got, want) {
		t.Fatalf("walk saw %v, want %v", got, want)
	}
	// the key is the rate the statistics show
	_, entries := r.StatsParts(r.Services())
	for i, svc := range r.Services() {
		if k := svc.key(SortRequestsPerSecond); k != entries[i].RequestsPerSecond {
			t.Errorf("image %d: key %v, statistics %v", svc.ImageID, k, entries[i].RequestsPerSecond)
		}
	}
}

func TestPortMappingsPage(t *testing.T) {
	r := newTestRegistry(t, Options{})
	for id := int64(1); id <= 9; id++ {
		spec := svcSpec(id, ctr("a", 1))
		if id%3 != 0 {
			spec.ExternalPort = 9100 - int(id) // ports descend as ids ascend
		}
		mustRegister(t, r, spec)
	}
	var got []int64
	q := ListQuery{Limit: 4}
	for {
		ms, next := r.PortMappingsPage(q)
		for _, m := range ms {
			if m.ExternalPort != 9100-int(m.ImageID) || m.ContainerCount != 1 || m.ImageName == "" {
				t.Fatalf("mapping %+v", m)
			}
			got = append(got, m.ImageID)
		}
		if next == nil {
			break
		}
		q.After = next
	}
	if want := []int64{1, 2, 4, 5, 7, 8}; !slices.Equal(got, want) {
		t.Fatalf("walk saw %v, want %v", got, want)
	}
}

func TestPageIDs(t *testing.T) {
	r := pagingRegistry(t, 6)
	ledger := []int64{1, 2, 3, 4, 5, 6, 40, 41} // 40 and 41: removed images the ledger still has
	for _, tc := range []struct {
		name     string
		q        ListQuery
		want     []int64
		wantNext *Cursor
	}{
		{"all", ListQuery{}, ledger, nil},
		{"a page", ListQuery{Limit: 3}, []int64{1, 2, 3}, &Cursor{ImageID: 3}},
		{"the last page", ListQuery{Limit: 3, After: &Cursor{ImageID: 5}}, []int64{6, 40, 41}, nil},
		{"a filter leaves removed images out", ListQuery{Prefix: "api"}, []int64{1, 3, 5}, nil},
		{"status", ListQuery{Status: StatusDraining, Limit: 2}, []int64{1, 2}, &Cursor{ImageID: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, next := r.PageIDs(slices.Clone(ledger), tc.q)
			if !slices.Equal(got, tc.want) || !reflect.DeepEqual(next, tc.wantNext) {
				t.Fatalf("got %v next %+v, want %v next %+v", got, next, tc.want, tc.wantNext)
			}
		})
	}
}

func TestTotals(t *testing.T) {
	r := pagingRegistry(t, 8) // draining: 1+2+3+0+1+2+3+0
	mustRegister(t, r, ServiceSpec{ImageID: 20, ImageName: "x", ExternalPort: 9000,
		Containers: []ContainerSpec{{ContainerID: "u", Port: 1, Status: StatusUnknown, Weight: 1}}})
	for _, svc := range r.Services() {
		svc.State.Requests.Add(svc.ImageID)
		svc.State.Failures.Add(1)
	}
	tot := r.Totals()
	want := map[Status]int{StatusHealthy: 8, StatusDraining: 12, StatusUnknown: 1, StatusStarting: 0, StatusUnhealthy: 0}
	if !reflect.DeepEqual(tot.ContainersByStatus, want) {
		t.Fatalf("by status %v, want %v", tot.ContainersByStatus, want)
	}
	if !reflect.DeepEqual(CountByStatus(r.Services()), want) {
		t.Fatalf("CountByStatus %v, want %v", CountByStatus(r.Services()), want)
	}
	all, _ := r.StatsParts(r.Services())
	if tot.Services != 9 || tot.Containers != 21 || tot.HealthyContainers != 8 || tot.PortMappings != 1 ||
		tot.TotalRequests != all.TotalRequests || tot.FailedRequests != 9 || tot.RequestsPerSecond != all.RequestsPerSecond {
		t.Fatalf("totals %+v; statistics %+v", tot, all)
	}
}
