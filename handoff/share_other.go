//go:build !linux

package handoff

import (
	"errors"
	"net"
)

// canShare: elsewhere than on Linux a reload's sockets are Caddy's own.
const canShare = false

func steer(uintptr) error { return errors.New("steering a reuseport group needs Linux") }

func listenersOn(net.IP, int) (int, error) { return 0, errors.New("needs Linux") }

func otherProcess(string, int) (string, error) { return "", nil }

func perCPUSockets(*net.TCPAddr) ([]net.Listener, error) { return nil, errors.New("needs Linux") }
