package registry

import "testing"

// TestWalkerSeesOneSnapshot: a Walker walks the services of the snapshot it
// was made from at every call, whatever changed since (the metrics
// exposition walks it once per metric family).
func TestWalkerSeesOneSnapshot(t *testing.T) {
	r := New(Options{})
	spec := func(id int64) ServiceSpec {
		return ServiceSpec{ImageID: id, ImageName: "app", Containers: []ContainerSpec{
			{ContainerID: "a", Host: "127.0.0.1", Port: 8000, Status: StatusHealthy, Weight: 1}}}
	}
	for id := int64(1); id <= 3; id++ {
		if _, err := r.Register(spec(id)); err != nil {
			t.Fatal(err)
		}
	}
	walk := r.Walker()
	if _, err := r.Register(spec(4)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Remove(1); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		seen := map[int64]bool{}
		walk(func(s *Service) { seen[s.ImageID] = true })
		if len(seen) != 3 || !seen[1] || seen[4] {
			t.Fatalf("the walker saw %v, want images 1 to 3 as they were when it was made", seen)
		}
	}
	seen := 0
	r.Walker()(func(*Service) { seen++ })
	if seen != 3 {
		t.Fatalf("a new walker saw %d images, want 3 (2, 3 and 4)", seen)
	}
}
