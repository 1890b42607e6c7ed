// strategy.go owns the table of balancing algorithms and the strategy interface their files implement.

package registry

import (
	"slices"
	"strings"
	"sync"
	"time"
)

// Algorithm names a balancing algorithm of a service. The algorithms are the
// rows of one table (algorithmTable, in strategy.go); each one's constant,
// strategy and state are in a file of its own.
type Algorithm string

// A strategy is an algorithm built for one version of a service, as grpc's
// Picker is for one state of a balancer: newService builds it once, and a
// pick is one call of pick. What must outlive the version (a rotation's
// turn, a lock over per-container state) it keeps in a durableState.
type strategy interface {
	// pick returns the index in the version's Available() of the container
	// the algorithm chooses among those f admits (f.eligibleAt), or -1 when
	// f admits none. f comes by value: a pointer to it would move it to
	// the heap on every pick (see filter).
	pick(f filter) int
}

// An observer is a strategy that learns from the outcome of each attempt
// (least_latency's response times). Its picks read the clock (filter.now).
type observer interface {
	observe(c *Container, failed bool, d time.Duration)
}

// algorithm is one row of algorithmTable.
type algorithm struct {
	name    Algorithm
	aliases []string // other names ParseAlgorithm accepts
	usesKey bool     // balances by the request's hash key (PickRequest.Key)
	build   func(s *Service) strategy
}

// algorithmTable is the one list of the balancing algorithms: ParseAlgorithm,
// AlgorithmNames (in this order), UsesKey and newService read it. Adding an
// algorithm is a file with its constant and strategy, and a row here. The
// first row is what a version of an unknown algorithm balances by.
var algorithmTable = []algorithm{
	{name: RoundRobin, build: newRoundRobin},
	{name: WeightedRoundRobin, build: newWeightedRoundRobin},
	{name: LeastConnections, aliases: []string{"least_conn"}, build: newLeastConnections},
	{name: Random, build: newRandom},
	{name: PowerOfTwo, build: newPowerOfTwo},
	{name: IPHash, usesKey: true, build: newRendezvous},
	{name: ConsistentHash, usesKey: true, build: newRendezvous},
	{name: LeastLatency, build: newLeastLatency},
}

// AlgorithmNames lists the algorithm names ParseAlgorithm accepts, for
// messages: "round_robin, weighted_round_robin, least_connections (alias
// least_conn), random, power_of_two, ip_hash, consistent_hash or
// least_latency".
var AlgorithmNames = algorithmNames()

func algorithmNames() string {
	var b strings.Builder
	for i, a := range algorithmTable {
		switch {
		case i == len(algorithmTable)-1 && i > 0:
			b.WriteString(" or ")
		case i > 0:
			b.WriteString(", ")
		}
		b.WriteString(string(a.name))
		switch len(a.aliases) {
		case 0:
		case 1:
			b.WriteString(" (alias " + a.aliases[0] + ")")
		default:
			b.WriteString(" (aliases " + strings.Join(a.aliases, ", ") + ")")
		}
	}
	return b.String()
}

// ParseAlgorithm returns the algorithm for name, accepting the aliases of
// AlgorithmNames. The empty name yields the empty algorithm (meaning "the
// default").
func ParseAlgorithm(name string) (Algorithm, bool) {
	if name == "" {
		return "", true
	}
	for i := range algorithmTable {
		if a := &algorithmTable[i]; string(a.name) == name || slices.Contains(a.aliases, name) {
			return a.name, true
		}
	}
	return "", false
}

// UsesKey reports whether the algorithm balances by a request key.
func (a Algorithm) UsesKey() bool {
	row := a.row()
	return row != nil && row.usesKey
}

// row returns the algorithm's row by its own name (not an alias), or nil.
func (a Algorithm) row() *algorithm {
	for i := range algorithmTable {
		if algorithmTable[i].name == a {
			return &algorithmTable[i]
		}
	}
	return nil
}

// newStrategy builds the strategy of version s (newService calls it once),
// by the first row for an unknown or empty algorithm.
func newStrategy(s *Service) strategy {
	row := s.Algorithm.row()
	if row == nil {
		row = &algorithmTable[0]
	}
	return row.build(s)
}

// strategyStates holds, in a ServiceState, what the strategies of a service
// keep across its versions, by algorithm.
type strategyStates struct {
	mu     sync.Mutex
	states []strategyState // a few: one per algorithm the service has had
}

type strategyState struct {
	alg   Algorithm
	state any
}

// durableState returns algorithm alg's state of the service whose state is
// st, a new T on first use. Strategies call it when they are built, never
// on a pick. States are not dropped when the service changes algorithm: a
// service switched to another algorithm and back continues where it was.
func durableState[T any](st *ServiceState, alg Algorithm) *T {
	ss := &st.strategies
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, s := range ss.states {
		if v, ok := s.state.(*T); ok && s.alg == alg {
			return v
		}
	}
	v := new(T)
	ss.states = append(ss.states, strategyState{alg, v})
	return v
}
