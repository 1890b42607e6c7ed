// Package testkit holds the few test helpers that more than one package of
// this module needs (the root's end-to-end tests, cmd/caddy, health,
// handoff, registry): a free port, polling a condition, and the check of a
// round-robin rotation. The root's end-to-end kit (Caddy, backends, API
// calls) is the root's kit_test.go.
package testkit

import (
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. It
// is taken below the kernel's ephemeral range (ip_local_port_range), not
// from it: a test that stops a server and starts it again on the same port
// (a node killed and restarted) must not find the port taken meanwhile as
// the source port of some client's outgoing connection, which the kernel
// picks from that range. The chaos histories lost about one run in 25 to
// that before.
func FreePort(t testing.TB) int {
	t.Helper()
	low := ephemeralLow()
	for range 200 {
		port := 10000 + rand.IntN(low-10000)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // taken: another one
		}
		l.Close()
		return port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768
// where it cannot be read, Linux's default).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	low, err := strconv.Atoi(f[0])
	if err != nil || low <= 11000 {
		return 32768
	}
	return low
}

// Eventually polls cond until it holds, failing the test after 10 s.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a condition, not a wait for time to pass
	}
}

// CheckRotation asserts that every n consecutive picks (every window, not
// just every n-th) hit each of n containers exactly once.
func CheckRotation(t testing.TB, picks []string, n int) {
	t.Helper()
	for i := 0; i+n <= len(picks); i++ {
		window := slices.Clone(picks[i : i+n])
		slices.Sort(window)
		if len(slices.Compact(window)) != n {
			t.Fatalf("picks %d..%d = %v: not each of the %d containers once", i, i+n-1, picks[i:i+n], n)
		}
	}
}

// Main runs the tests of a package that starts Caddy in-process, with
// Caddy's configuration and data directories (autosave.json, the registry
// file, the internal CA) in a temporary directory instead of the real XDG
// ones. Caddy reads those directories into caddy.ConfigAutosavePath and
// caddy.DefaultStorage when its package initialises, before TestMain runs,
// so both are set again from the new environment.
func Main(m *testing.M) {
	dir, err := os.MkdirTemp("", "imagelb-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CONFIG_HOME", dir)
	os.Setenv("XDG_DATA_HOME", dir)
	caddy.ConfigAutosavePath = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	caddy.DefaultStorage.Path = caddy.AppDataDir()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
