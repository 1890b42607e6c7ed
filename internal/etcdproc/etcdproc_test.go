package etcdproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	buildOnce sync.Once
	built     string
	buildErr  error
)

// etcdBinary is ETCD_BIN (Debian's /usr/bin/etcd, say), or the etcd
// Build makes, once for the package's tests.
func etcdBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("ETCD_BIN"); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "etcdproc-")
		if err != nil {
			buildErr = err
			return
		}
		built, buildErr = Build("../..", dir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built != "" {
		os.RemoveAll(filepath.Dir(built))
	}
	os.Exit(code)
}

// TestKillAndRestart: a three-member cluster of processes keeps every
// acknowledged write through a follower and then the leader killed with
// SIGKILL and restarted on its data, and through every member killed at
// once; a compacted revision is refused to a reader afterwards.
func TestKillAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds etcd and starts three processes")
	}
	c := Start(t, etcdBinary(t), 3)
	t.Logf("etcd %s", c.Version())
	cli := c.Client()
	// put writes k, again while etcd answers that it may not have (a
	// proposal lost in an election times out): the same value each time
	put := func(k string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := cli.Put(ctx, k, "v")
			cancel()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("put %s: %v", k, err)
			}
			t.Logf("put %s: %v; again", k, err)
		}
	}
	put("k0")

	leader := waitLeader(t, c)
	follower := (leader + 1) % 3
	pid := c.members[follower].cmd.Process.Pid
	c.Stop(follower)
	if err := exec.Command("kill", "-0", fmt.Sprint(pid)).Run(); err == nil {
		t.Fatalf("member %d's process %d still runs after Stop", follower, pid)
	}
	put("k1") // two of three: a quorum
	c.Restart(follower)

	c.Stop(leader)
	put("k2") // a new leader is elected
	if l := waitLeader(t, c); l == leader {
		t.Fatalf("member %d leads while it is killed", l)
	}
	c.Restart(leader)

	c.StopAll()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err := cli.Put(ctx, "lost", "v")
	cancel()
	if err == nil {
		t.Fatal("a put succeeded with every member killed")
	}
	c.RestartAll()
	put("k3")
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "k", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	if fmt.Sprint(keys) != "[k0 k1 k2 k3]" {
		t.Fatalf("keys after the kills: %v, want [k0 k1 k2 k3]", keys)
	}

	rev := c.Compact(0)
	_, err = cli.Get(ctx, "k0", clientv3.WithRev(rev-1))
	if !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("a read at revision %d after compacting to %d: %v, want %v", rev-1, rev, err, rpctypes.ErrCompacted)
	}
}

// waitLeader polls until a member says it leads.
func waitLeader(t *testing.T, c *Cluster) int {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if l := c.Leader(); l >= 0 {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatal("no leader after 60s")
		}
		time.Sleep(20 * time.Millisecond) // polling for an election
	}
}

func TestVersionFlags(t *testing.T) {
	for _, tt := range []struct{ version, want string }{
		{"3.4.23", "[--experimental-watch-progress-notify-interval 250ms]"},
		{"3.5.17", "[--experimental-watch-progress-notify-interval 250ms --unsafe-no-fsync]"},
		{"3.7.3", "[--watch-progress-notify-interval 250ms --unsafe-no-fsync]"},
	} {
		if got := fmt.Sprint(versionFlags(tt.version)); got != tt.want {
			t.Errorf("etcd %s: %s, want %s", tt.version, got, tt.want)
		}
	}
}
