package imagelb

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// fdWatch warns when the process nears its open-file limit. At the limit a
// server cannot accept connections: Go's server retries Accept with a
// back-off and Caddy logs that only at DEBUG, so clients hang and the log
// says nothing. fdWatch logs one WARN per burst (when open files reach 90%
// of the limit) and one INFO when they are back below 80%.
type fdWatch struct {
	open   func() (int, error)    // files open now
	limit  func() (uint64, error) // the soft RLIMIT_NOFILE
	logger *zap.Logger
	warned bool
}

// fdWatchInterval is how often open files are counted (about 10 µs per
// 1,000 open files on Linux).
const fdWatchInterval = time.Second

func newFDWatch(logger *zap.Logger) *fdWatch {
	return &fdWatch{open: openFiles, limit: fileLimit, logger: logger}
}

// run checks every fdWatchInterval until stop is closed.
func (w *fdWatch) run(stop <-chan struct{}) {
	defer func() {
		if v := recover(); v != nil {
			w.logger.Error("open-file watch panicked", zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
		}
	}()
	t := time.NewTicker(fdWatchInterval)
	defer t.Stop()
	for {
		w.check()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// check counts open files once and logs a change of state.
func (w *fdWatch) check() {
	n, err := w.open()
	if err != nil {
		return // not Linux, or /proc is not mounted: nothing to watch
	}
	lim, err := w.limit()
	if err != nil || lim == 0 || lim > 1<<40 {
		return
	}
	used := min(uint64(n), lim)
	switch {
	case !w.warned && used*10 >= lim*9:
		w.warned = true
		w.logger.Warn(fmt.Sprintf("open files at %d of the process limit of %d (RLIMIT_NOFILE): new connections wait or fail; "+
			"raise the limit (LimitNOFILE= in the systemd unit, ulimit -n before starting Caddy)", used, lim),
			zap.Uint64("open_files", used), zap.Uint64("limit", lim))
	case w.warned && used*10 < lim*8:
		w.warned = false
		w.logger.Info("open files back below 80% of the process limit", zap.Uint64("open_files", used), zap.Uint64("limit", lim))
	}
}

// openFiles counts the process's open file descriptors.
func openFiles() (int, error) {
	d, err := os.Open("/proc/self/fd")
	if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
		return math.MaxInt, nil // no descriptor left to count them with: at the limit
	}
	if err != nil {
		return 0, err
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(1024)
		n += len(names)
		if err != nil || len(names) == 0 {
			break
		}
	}
	return n - 1, nil // without the directory itself
}
