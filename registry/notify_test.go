package registry

import (
	"slices"
	"sync"
	"testing"
)

// TestOnChange: every published change tells the listeners which images
// changed, once Lookup shows the change; a removed listener hears nothing
// more.
func TestOnChange(t *testing.T) {
	r := New(Options{})
	var mu sync.Mutex
	var got []int64
	var stale []int64
	remove := r.OnChange(func(ids []int64) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, ids...)
		if svc := r.Lookup(2); slices.Contains(ids, 2) && svc != nil && len(svc.Containers) == 0 {
			stale = append(stale, 2) // 2 is registered with its container in one change
		}
	})
	expect := func(step string, want ...int64) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		slices.Sort(got)
		got = slices.Compact(got)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: told %v, want %v", step, got, want)
		}
		got = nil
	}
	ctr := ContainerSpec{ContainerID: "a", Host: "127.0.0.1", Port: 1, Status: StatusHealthy, Weight: 1}
	if _, err := r.Register(ServiceSpec{ImageID: 1, ImageName: "one"}); err != nil {
		t.Fatal(err)
	}
	expect("register", 1)
	if _, err := r.Register(ServiceSpec{ImageID: 2, ImageName: "two", Containers: []ContainerSpec{ctr}}); err != nil {
		t.Fatal(err)
	}
	expect("register with a container", 2)
	if _, err := r.PutContainer(1, ctr); err != nil {
		t.Fatal(err)
	}
	expect("put container", 1)
	if !r.CompareAndSwapStatus(1, "a", StatusHealthy, StatusUnhealthy) {
		t.Fatal("no swap")
	}
	expect("a health verdict", 1)
	if _, err := r.Remove(2); err != nil {
		t.Fatal(err)
	}
	expect("remove", 2)
	if err := r.ApplyStatic([]ServiceSpec{{ImageID: 3, ImageName: "three"}, {ImageID: 4, ImageName: "four"}}); err != nil {
		t.Fatal(err)
	}
	expect("static services", 3, 4)
	if err := r.ApplyStatic(nil); err != nil {
		t.Fatal(err)
	}
	expect("static services removed", 3, 4)
	remove()
	if _, err := r.Remove(1); err != nil {
		t.Fatal(err)
	}
	expect("after the listener was removed")
	if len(stale) > 0 {
		t.Fatal("a listener saw the version before its change")
	}
}
