package registry

import (
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

func TestAlgorithmTable(t *testing.T) {
	// Tests, docs and error messages quote this text.
	const want = "round_robin, weighted_round_robin, least_connections (alias least_conn), random, " +
		"power_of_two, ip_hash, consistent_hash or least_latency"
	if AlgorithmNames != want {
		t.Fatalf("AlgorithmNames = %q, want %q", AlgorithmNames, want)
	}
	for _, row := range algorithmTable {
		for _, name := range append([]string{string(row.name)}, row.aliases...) {
			if got, ok := ParseAlgorithm(name); !ok || got != row.name {
				t.Errorf("ParseAlgorithm(%q) = %q, %v; want %q", name, got, ok, row.name)
			}
		}
		if row.name.UsesKey() != row.usesKey {
			t.Errorf("%s.UsesKey() = %v", row.name, !row.usesKey)
		}
	}
	for _, tt := range []struct {
		name string
		want Algorithm
		ok   bool
	}{
		{"", "", true},
		{"least_conn", LeastConnections, true},
		{"Round_Robin", "", false},
		{"least", "", false},
		{"hash", "", false},
	} {
		if got, ok := ParseAlgorithm(tt.name); got != tt.want || ok != tt.ok {
			t.Errorf("ParseAlgorithm(%q) = %q, %v; want %q, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
	if !IPHash.UsesKey() || !ConsistentHash.UsesKey() || Algorithm("least_conn").UsesKey() || Algorithm("").UsesKey() {
		t.Error("UsesKey: only ip_hash and consistent_hash balance by a key")
	}
}

// TestUnknownAlgorithmBalancesRoundRobin: a version whose algorithm is not
// a row's own name (an alias, or a name the registry was given through its
// Go API unchecked) balances by the table's first row, round robin.
func TestUnknownAlgorithmBalancesRoundRobin(t *testing.T) {
	for _, alg := range []Algorithm{"", "least_conn", "bogus"} {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, alg, ServiceOptions{}, wz("0", 1, ""), wz("1", 1, ""), wz("2", 1, ""))
		if _, ok := svc.strategy.(roundRobin); !ok && alg != "" {
			t.Errorf("algorithm %q: strategy %T, want roundRobin", alg, svc.strategy)
		}
		if got := pickSequence(r, 7); got != "0120120" {
			t.Errorf("algorithm %q: picks %s, want the rotation 0120120", alg, got)
		}
	}
}

// pickSequence makes n picks of image 1 and returns the container_ids
// picked, one after the other.
func pickSequence(r *Registry, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(r.Lookup(1).ChooseContainer(&PickRequest{}).ContainerID)
	}
	return b.String()
}

// TestAlgorithmChangeKeepsState: what a strategy keeps across versions is
// kept across a change of algorithm too, as when it lived in the service's
// and the containers' state: the smooth weighted rotation continues where it
// was, and round robin, least_connections' ties and keyless hashing share
// one turn.
func TestAlgorithmChangeKeepsState(t *testing.T) {
	r := newTestRegistry(t, Options{})
	weighted := []ContainerSpec{wz("a", 5, ""), wz("b", 1, ""), wz("c", 1, "")}
	pick := func(alg Algorithm, cs []ContainerSpec, n int) string {
		t.Helper()
		registerTraffic(t, r, alg, ServiceOptions{}, cs...)
		return pickSequence(r, n)
	}
	got := pick(WeightedRoundRobin, weighted, 3) + "|" + pick(RoundRobin, weighted, 2) + "|" + pick(WeightedRoundRobin, weighted, 11)
	if want := "aab|ab|acaaaabacaa"; got != want {
		t.Fatalf("weighted 3, round robin 2, weighted 11: picks %s, want %s", got, want)
	}

	r = newTestRegistry(t, Options{})
	three := []ContainerSpec{wz("0", 1, ""), wz("1", 1, ""), wz("2", 1, "")}
	got = pick(RoundRobin, three, 2) + "|" + pick(LeastConnections, three, 2) + "|" + pick(ConsistentHash, three, 2) + "|" + pick(RoundRobin, three, 3)
	if want := "01|20|12|012"; got != want {
		t.Fatalf("round robin, least_connections, consistent_hash without a key, round robin: picks %s, want %s", got, want)
	}
}

// TestFilterFitsInRegisters: strategies get the filter by value on every
// pick; the compiler keeps it in registers only while it is at most 32
// bytes and no struct in it has more than four fields.
func TestFilterFitsInRegisters(t *testing.T) {
	if size := unsafe.Sizeof(filter{}); size > 32 {
		t.Errorf("filter is %d bytes, want at most 32", size)
	}
	var walk func(reflect.Type)
	walk = func(typ reflect.Type) {
		if typ.NumField() > 4 {
			t.Errorf("%s has %d fields, want at most 4", typ, typ.NumField())
		}
		for i := range typ.NumField() {
			if f := typ.Field(i).Type; f.Kind() == reflect.Struct {
				walk(f)
			}
		}
	}
	walk(reflect.TypeFor[filter]())
}
