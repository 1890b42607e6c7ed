package recycle

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
)

// counting is a real transport that remembers whether it was retired.
type counting struct {
	*http.Transport
	id      int
	retired atomic.Bool
}

func TestRebuildsAfterEveryRetiredAddresses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	var retired atomic.Uint64
	var mu sync.Mutex
	var built []*counting
	fail := false
	tr, err := New(func() (http.RoundTripper, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, errors.New("no transport today")
		}
		c := &counting{Transport: &http.Transport{}, id: len(built)}
		built = append(built, c)
		return c, nil
	}, func(rt http.RoundTripper) {
		rt.(*counting).retired.Store(true)
		rt.(*counting).CloseIdleConnections()
	}, retired.Load, 10)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: tr}
	get := func() int {
		t.Helper()
		resp, err := client.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return tr.Current().(*counting).id
	}
	tests := []struct {
		name    string
		retire  uint64
		fail    bool
		want    int
		retired []bool
	}{
		{name: "nothing retired", retire: 0, want: 0, retired: []bool{false}},
		{name: "fewer than every", retire: 9, want: 0, retired: []bool{false}},
		{name: "every reached", retire: 1, want: 1, retired: []bool{true, false}},
		{name: "a failed rebuild keeps the current one", retire: 10, fail: true, want: 1, retired: []bool{true, false}},
		{name: "the next request rebuilds", retire: 0, want: 2, retired: []bool{true, true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			retired.Add(tt.retire)
			mu.Lock()
			fail = tt.fail
			mu.Unlock()
			if got := get(); got != tt.want {
				t.Fatalf("request went through transport %d, want %d", got, tt.want)
			}
			mu.Lock()
			defer mu.Unlock()
			for i, c := range built {
				if c.retired.Load() != tt.retired[i] {
					t.Fatalf("transport %d retired: %v, want %v", i, c.retired.Load(), tt.retired[i])
				}
			}
		})
	}
	if n := tr.Generations(); n != 3 {
		t.Fatalf("%d generations, want 3", n)
	}
	tr.Close()
	if !built[2].retired.Load() {
		t.Fatal("Close did not retire the current transport")
	}
}

// TestConcurrentRequestsRebuildOnce: requests racing past the threshold
// build one new transport between them.
func TestConcurrentRequestsRebuildOnce(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	var retired atomic.Uint64
	tr, err := New(func() (http.RoundTripper, error) { return &http.Transport{}, nil },
		func(rt http.RoundTripper) { rt.(*http.Transport).CloseIdleConnections() }, retired.Load, 5)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: tr}
	retired.Store(5)
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(srv.URL)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		}()
	}
	wg.Wait()
	if n := tr.Generations(); n != 2 {
		t.Fatalf("%d generations, want 2", n)
	}
}
