package handoff

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// canShare: on Linux a listening socket can be kept across reloads.
const canShare = true

// steer attaches to the SO_REUSEPORT group of the listening socket fd a
// classic BPF program that gives every new connection (and every half-open
// one) to the group's first socket, which is fd's when it is the only one on
// its address: sockets of later configs, opened by Caddy for the same
// address, join the group after it and get nothing, so closing them resets
// nothing. The kernel keeps the first socket in place while later ones
// leave (a leaving socket's slot takes the last one's).
func steer(fd uintptr) error {
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	return unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
		&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
}

// perCPUSockets opens, beside the listening socket at addr, one more
// socket per CPU in its SO_REUSEPORT group, each with SO_INCOMING_CPU set to
// its CPU: since Linux 6.1 the group gives a new connection to a socket whose
// SO_INCOMING_CPU is the CPU handling it, when there is one, so these get
// every new connection and later sockets without it (the next configs') get
// none. For where a BPF program cannot be attached (some sandboxes' seccomp
// refuses SO_ATTACH_REUSEPORT_CBPF).
func perCPUSockets(addr *net.TCPAddr) ([]net.Listener, error) {
	n := runtime.NumCPU()
	if b, err := os.ReadFile("/sys/devices/system/cpu/possible"); err == nil {
		// "0-7": the highest CPU number that may handle a packet
		if _, hi, ok := strings.Cut(strings.TrimSpace(string(b)), "-"); ok {
			if v, err := strconv.Atoi(hi); err == nil && v+1 > n {
				n = v + 1
			}
		}
	}
	var lns []net.Listener
	for cpu := range n {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			cerr := c.Control(func(fd uintptr) {
				err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
				if err == nil {
					err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_INCOMING_CPU, cpu)
				}
			})
			return errors.Join(cerr, err)
		}}
		ln, err := lc.Listen(context.Background(), "tcp", addr.String())
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// listenEntry is a LISTEN socket of /proc/net/tcp or tcp6.
type listenEntry struct {
	ip    net.IP
	port  int
	inode string
}

// listeningSockets lists the TCP sockets in LISTEN state of this network
// namespace.
func listeningSockets() ([]listenEntry, error) {
	var out []listenEntry
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			if os.IsNotExist(err) {
				continue // no IPv6
			}
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" { // 0A: TCP_LISTEN
				continue
			}
			ip, port, ok := parseProcAddr(fields[1])
			if ok {
				out = append(out, listenEntry{ip: ip, port: port, inode: fields[9]})
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// parseProcAddr parses /proc/net/tcp's "0100007F:1F90": the address as
// 32-bit words in host byte order (little-endian here), the port in hex.
func parseProcAddr(s string) (net.IP, int, bool) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return nil, 0, false
	}
	raw, err := hex.DecodeString(hexIP)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return nil, 0, false
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return nil, 0, false
	}
	return net.IP(raw), int(port), true
}

// socketInodes returns the inodes of the sockets the process pid ("self"
// for this one) has open, as /proc/PID/fd shows them ("socket:[123]").
func socketInodes(pid string) map[string]bool {
	inodes := map[string]bool{}
	dir := filepath.Join("/proc", pid, "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return inodes
	}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	return inodes
}

// overlaps reports whether a socket listening on a and one on b share
// connections: the same address, or either a wildcard (0.0.0.0, ::).
func overlaps(a, b net.IP) bool {
	return a.IsUnspecified() || b.IsUnspecified() || a.Equal(b)
}

// listenersOn counts the LISTEN sockets on exactly ip:port.
func listenersOn(ip net.IP, port int) (int, error) {
	entries, err := listeningSockets()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if e.port == port && e.ip.Equal(ip) {
			n++
		}
	}
	return n, nil
}

// otherProcess looks for a socket listening on host:port (host "" for every
// address) that is not this process's, and describes its owner ("pid 123
// (caddy)" when /proc shows it, else "another process"); "" when there is
// none.
func otherProcess(host string, port int) (string, error) {
	ip := net.IPv6unspecified
	if host != "" {
		if ip = net.ParseIP(host); ip == nil {
			addrs, err := net.LookupIP(host)
			if err != nil || len(addrs) == 0 {
				return "", nil // Caddy will report the address itself
			}
			ip = addrs[0]
		}
	}
	entries, err := listeningSockets()
	if err != nil {
		return "", err
	}
	var mine map[string]bool
	for _, e := range entries {
		if e.port != port || !overlaps(e.ip, ip) {
			continue
		}
		if mine == nil {
			mine = socketInodes("self")
		}
		if mine[e.inode] {
			continue
		}
		return fmt.Sprintf("%s (listening on %s)", ownerOf(e.inode), net.JoinHostPort(e.ip.String(), strconv.Itoa(port))), nil
	}
	return "", nil
}

// ownerOf names the process that has the socket inode open.
func ownerOf(inode string) string {
	procs, _ := os.ReadDir("/proc")
	self := strconv.Itoa(os.Getpid())
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil || p.Name() == self {
			continue
		}
		if socketInodes(p.Name())[inode] {
			comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
			return fmt.Sprintf("pid %s (%s)", p.Name(), strings.TrimSpace(string(comm)))
		}
	}
	return "another process (its pid is not readable here)"
}
