//go:build !unix

package imagelb

import "errors"

// fileLimit: no RLIMIT_NOFILE here, so nothing is watched.
func fileLimit() (uint64, error) {
	return 0, errors.New("no open-file limit on this system")
}
