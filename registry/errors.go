package registry

import (
	"errors"
	"fmt"
	"strings"
)

// Kind classifies a registry error; the HTTP layer maps it to a status code.
type Kind int

// Error kinds.
const (
	KindInvalid     Kind = iota + 1 // 422
	KindNotFound                    // 404
	KindConflict                    // 409
	KindTooLarge                    // 413
	KindStorage                     // 500: the store refused the change; nothing was applied
	KindUnavailable                 // 503: a shared store did not answer; the change's outcome is unknown
)

// ErrStoreUnavailable is wrapped by a store's errors when it cannot be
// reached (etcd down, no quorum) or did not answer a commit: the registry
// answers 503, not 500, saying that the change's outcome is unknown (a
// commit that timed out may have been applied).
var ErrStoreUnavailable = errors.New("the shared store cannot be reached")

// FieldError is one validation failure, located like FastAPI locates them:
// Loc is a path such as ["body", 0, "port"] or ["query", "image_name"].
type FieldError struct {
	Loc  []any  `json:"loc"`
	Msg  string `json:"msg"`
	Type string `json:"type"`
}

// Error is the error type of every registry operation that rejects a request.
// A rejected operation changes nothing.
type Error struct {
	Kind   Kind
	Detail string
	Fields []FieldError
	// missing is the image a 404 found missing, or one of whose
	// containers it found missing (0: another error).
	missing int64
}

func (e *Error) Error() string {
	if len(e.Fields) == 0 {
		return e.Detail
	}
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		loc := make([]string, len(f.Loc))
		for j, l := range f.Loc {
			loc[j] = fmt.Sprint(l)
		}
		parts[i] = strings.Join(loc, ".") + ": " + f.Msg
	}
	return strings.Join(parts, "; ")
}

// KindOf returns the kind of err, or 0 when err is not a registry error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

func notFound(format string, args ...any) *Error {
	return &Error{Kind: KindNotFound, Detail: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) *Error {
	return &Error{Kind: KindConflict, Detail: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *Error {
	return &Error{Kind: KindInvalid, Detail: fmt.Sprintf(format, args...)}
}

// fieldErrors collects validation failures.
type fieldErrors []FieldError

func (fe *fieldErrors) add(typ, msg string, loc ...any) {
	*fe = append(*fe, FieldError{Loc: loc, Msg: msg, Type: typ})
}

// has reports whether an error is at loc already.
func (fe fieldErrors) has(loc []any) bool {
	for _, f := range fe {
		if fmt.Sprint(f.Loc) == fmt.Sprint(loc) {
			return true
		}
	}
	return false
}

func (fe fieldErrors) err() error {
	if len(fe) == 0 {
		return nil
	}
	return &Error{Kind: KindInvalid, Fields: fe}
}
