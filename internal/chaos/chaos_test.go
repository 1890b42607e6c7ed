package chaos

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestChaos runs one short randomized history with every fault but the
// long pause, on three nodes of the built binary and a three-member
// embedded etcd, and fails on any anomaly. CHAOS_SEED picks the seed
// (default: the time); the long runs are `go run ./bench/chaos`.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and three Caddy nodes")
	}
	seed := uint64(time.Now().UnixNano() % 1_000_000)
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", s, err)
		}
		seed = n
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin, err := BuildCaddy(root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rep := Run(t, bin, Config{
		Seed:     seed,
		Duration: 15 * time.Second,
		Faults:   []string{FaultMemberKill, FaultLeaderKill, FaultAllMembers, FaultNodeKill, FaultPartition, FaultCompact, FaultNodePause},
		FaultGap: 1500 * time.Millisecond,
		FaultFor: 1500 * time.Millisecond,
		PauseFor: 3 * time.Second,
		Out:      t.TempDir(),
		Log:      t.Logf,
	})
	t.Logf("seed %d: %d writes %v, %d etcd reads, %d node reads, %d faults; porcupine %s in %s; converged in %s; %s in all",
		rep.Seed, rep.Ops, rep.Codes, rep.EtcdReads, rep.NodeReads, len(rep.Faults), rep.Result,
		rep.CheckTook.Round(time.Millisecond), rep.Converged.Round(time.Millisecond), rep.TotalTaken.Round(time.Millisecond))
	for _, a := range rep.Anomalies {
		t.Errorf("seed %d: %s", seed, a)
	}
	if len(rep.Files) > 0 {
		for _, f := range rep.Files {
			data, _ := os.ReadFile(f)
			if filepath.Ext(f) == ".txt" && len(data) < 200_000 {
				t.Logf("%s:\n%s", f, data)
			}
		}
	}
}
