// CPU accounting: this run's processes, the others on the machine, and
// waiting for the machine to be quiet before a cell.

package main

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// othersCPU is the CPU seconds, by pid, of every user-space process this
// run did not start, with the CPU of the children each has reaped (so that
// short-lived ones, a compiler under go build say, are counted when they
// end). Kernel threads are left out: they also do this run's fsyncs.
func othersCPU() map[int]float64 {
	mine := map[int]bool{os.Getpid(): true, os.Getppid(): true}
	nodesMu.Lock()
	for _, n := range allNodes {
		if n.cmd != nil && n.cmd.Process != nil {
			mine[n.cmd.Process.Pid] = true
		}
	}
	nodesMu.Unlock()
	out := map[int]float64{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || mine[pid] {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(data, ')')
		if i < 0 || i+2 > len(data) {
			continue
		}
		f := strings.Fields(string(data[i+2:]))
		if len(f) < 15 {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		if flags&0x00200000 != 0 { // PF_KTHREAD
			continue
		}
		total := 0.0
		for _, v := range f[11:15] { // utime stime cutime cstime
			x, _ := strconv.ParseFloat(v, 64)
			total += x
		}
		out[pid] = total / 100 // USER_HZ
	}
	return out
}

// ownCPU is the CPU seconds of this process and of every node running.
func ownCPU() float64 {
	total := cpuSeconds(os.Getpid())
	nodesMu.Lock()
	defer nodesMu.Unlock()
	for _, n := range allNodes {
		if n.cmd == nil || n.exited == nil {
			continue
		}
		select {
		case <-n.exited:
		default:
			total += cpuSeconds(n.cmd.Process.Pid)
		}
	}
	return total
}

// machineCPU is the busy CPU seconds of the whole machine, kernel work
// included, from /proc/stat.
func machineCPU() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal guest guest_nice
	busy := 0.0
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest times are in user already
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / 100 // USER_HZ
}

// loadReading is the start of a measure of what other processes use.
type loadReading struct {
	others   map[int]float64
	own, all float64
	t0       time.Time
}

func startLoad() loadReading {
	return loadReading{others: othersCPU(), own: ownCPU(), all: machineCPU(), t0: time.Now()}
}

// cores is how many cores processes this run did not start used since
// the reading. Two upper bounds: theirs from /proc (too high when one
// reaps a child that ran long before), and the machine's busy time less
// this run's processes (too high by the kernel's work, this run's fsyncs
// among it). The lower one.
func (l loadReading) cores() float64 {
	byProcess := othersDelta(l.others, othersCPU())
	byMachine := max(0, (machineCPU()-l.all)-max(0, ownCPU()-l.own))
	el := time.Since(l.t0).Seconds()
	return min(byProcess, byMachine, float64(runtime.NumCPU())*el) / el
}

// waitQuiet waits, up to -quiet-wait, until other processes use under
// -quiet cores over a second; it returns how long it waited.
func waitQuiet() time.Duration {
	if *quietMax <= 0 {
		return 0
	}
	t0 := time.Now()
	for time.Since(t0) < *quietWait {
		l := startLoad()
		time.Sleep(time.Second)
		if l.cores() < *quietMax {
			break
		}
	}
	return time.Since(t0)
}

// othersDelta is the CPU seconds other processes used between two readings.
func othersDelta(before, after map[int]float64) float64 {
	d := 0.0
	for pid, v := range after {
		d += max(0, v-before[pid])
	}
	return d
}

// cpuSeconds is the user+system CPU time of a process, from /proc.
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// waitIdle waits until the process uses under 15% of a core for two
// seconds in a row; false if it did not within timeout. Not 0: at 100,000
// images the checks of health_interval 1h (200,000 containers an hour, 55
// a second) and Go's scavenger returning the first round's memory keep a
// node at 5–10% of a core for minutes.
func waitIdle(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	quiet := 0
	prev := cpuSeconds(pid)
	for time.Now().Before(deadline) {
		time.Sleep(time.Second)
		cur := cpuSeconds(pid)
		if cur-prev < 0.15 {
			quiet++
			if quiet == 2 {
				return true
			}
		} else {
			quiet = 0
		}
		prev = cur
	}
	return false
}
