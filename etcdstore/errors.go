// The errors of etcd requests: an unreachable etcd (a 503), a refused
// request, and a commit whose outcome is unknown.

package etcdstore

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imagelb/caddy-imagelb/registry"
)

// requestError wraps a failed request; what says what it tried ("read the
// registry from").
func (s *Store) requestError(what string, err error) error {
	if unreachable(err) {
		if errors.Is(err, context.DeadlineExceeded) {
			return &unavailableError{msg: fmt.Sprintf("could not %s etcd at %s: no answer within %s", what, s.eps, s.cfg.RequestTimeout), err: err}
		}
		return &unavailableError{msg: fmt.Sprintf("could not %s etcd at %s", what, s.eps), err: err}
	}
	return fmt.Errorf("could not %s etcd at %s: %w", what, s.eps, err)
}

// commitUnknown is the error of a commit whose outcome is unknown: the
// request may have reached etcd and been applied. It wraps
// registry.ErrStoreUnavailable (a 503 whose detail says the outcome is
// unknown).
func commitUnknown(what string, err error) error {
	return &unavailableError{msg: what, err: err}
}

// refused tells an error by which etcd refused a request, having applied
// nothing (a transaction too large, no space left, no permission), from
// one that leaves the outcome unknown.
func refused(err error) bool {
	var code codes.Code
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	} else if st, ok := status.FromError(err); ok {
		code = st.Code()
	} else {
		return false
	}
	switch code {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange, codes.PermissionDenied,
		codes.Unauthenticated, codes.ResourceExhausted, codes.NotFound, codes.AlreadyExists:
		return true
	}
	return false
}

// unavailableError is an error of an unreachable etcd: it wraps both
// registry.ErrStoreUnavailable and the cause.
type unavailableError struct {
	msg string
	err error
}

func (e *unavailableError) Error() string   { return e.msg + ": " + e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{registry.ErrStoreUnavailable, e.err} }

// unreachable tells the errors of an etcd that cannot answer (down, no
// quorum, no leader, a leader change, timed out) from those of a request
// it refused.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, registry.ErrStoreUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable || ee.Code() == codes.DeadlineExceeded
	}
	if st, ok := status.FromError(err); ok {
		return st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded
	}
	return false
}
