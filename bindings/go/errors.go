package tollgate

// #include "shim.h"
import "C"

import (
	"errors"
	"strconv"
	"time"
	"unsafe"
)

// Status is what a call of the C library did: the numbers of tg_status. The numbers are stable
// (a published number keeps its meaning and is never reused).
type Status uint32

// The statuses of tg_status, with the same numbers.
const (
	StatusOK              Status = 0   // success
	StatusNullArgument    Status = 1   // a required pointer was NULL (a binding bug)
	StatusInvalidArgument Status = 2   // an argument out of range (unknown enum value, ...)
	StatusInvalidUTF8     Status = 3   // text that must be UTF-8 is not
	StatusInvalidJSON     Status = 4   // JSON that could not be parsed
	StatusInvalidPolicy   Status = 5   // a refused policy; Error.Problems lists every problem
	StatusIO              Status = 6   // a file could not be read
	StatusPanic           Status = 7   // a bug inside tollgate, caught at the boundary
	StatusWrongThread     Status = 8   // a blocking function on a tollgate worker thread
	StatusCancelled       Status = 9   // the call was cancelled (context, break, Close)
	StatusRuntime         Status = 10  // tollgate's worker threads could not start
	StatusTimeout         Status = 11  // waiting for an identical request in flight timed out
	StatusAbandoned       Status = 12  // the identical request waited for was dropped
	StatusCacheRefused    Status = 13  // handed to the waiters but not cached (too large)
	StatusDenied          Status = 100 // a budget refused the call; Error.Budget names it
	StatusGaveUp          Status = 101 // the call failed and was not retried further
	StatusDeadline        Status = 102 // the call's deadline (Options.Deadline) passed
	StatusInvalidRequest  Status = 103 // not a chat request tollgate can send
	StatusNoUpstream      Status = 104 // nothing in the policy says where the call goes
	StatusAuth            Status = 105 // credentials could not be read or obtained
	StatusTransport       Status = 106 // the transport could not be set up
	StatusShared          Status = 107 // the identical call in flight this one waited for failed
	StatusStreamCut       Status = 108 // a stream broke off after content reached the caller
)

var statusNames = map[Status]string{
	StatusOK:              "ok",
	StatusNullArgument:    "null_argument",
	StatusInvalidArgument: "invalid_argument",
	StatusInvalidUTF8:     "invalid_utf8",
	StatusInvalidJSON:     "invalid_json",
	StatusInvalidPolicy:   "invalid_policy",
	StatusIO:              "io",
	StatusPanic:           "panic",
	StatusWrongThread:     "wrong_thread",
	StatusCancelled:       "cancelled",
	StatusRuntime:         "runtime",
	StatusTimeout:         "timeout",
	StatusAbandoned:       "abandoned",
	StatusCacheRefused:    "cache_refused",
	StatusDenied:          "denied",
	StatusGaveUp:          "gave_up",
	StatusDeadline:        "deadline",
	StatusInvalidRequest:  "invalid_request",
	StatusNoUpstream:      "no_upstream",
	StatusAuth:            "auth",
	StatusTransport:       "transport",
	StatusShared:          "shared",
	StatusStreamCut:       "stream_cut",
}

// String is the status's short name ("ok", "denied", ...), as tg_status_name gives it;
// "unknown(N)" for a number this binding does not know.
func (s Status) String() string {
	if n, ok := statusNames[s]; ok {
		return n
	}
	return "unknown(" + strconv.FormatUint(uint64(s), 10) + ")"
}

// Error is a failed call: the status and every detail of the C library's tg_error, copied into
// Go memory (the tg_error is always freed). Use errors.As to get it from any error this package
// returns (except ErrClosed), and errors.Is with the Err* sentinels to test the status.
type Error struct {
	// Status is the tg_status number.
	Status Status
	// Code is a stable machine-readable code finer than the status: for StatusDenied the denial
	// reason ("budget_exhausted", "concurrency", "wait_timeout", ...), for StatusGaveUp the
	// give-up reason ("attempts_exhausted", "not_retryable", ...), otherwise the status's name.
	Code string
	// Message says what happened, in words (for a refused policy: every problem, one a line).
	Message string
	// Budget is the budget that decided a denial; empty otherwise.
	Budget string
	// RetryAfter is when the same call could pass again, for a denial that knows it (see
	// HasRetryAfter); 0 otherwise.
	RetryAfter time.Duration
	// HasRetryAfter tells whether RetryAfter is known.
	HasRetryAfter bool
	// HTTPStatus is, for StatusGaveUp, the HTTP status of the last answer (0 when none came).
	HTTPStatus int
	// Body is, for StatusGaveUp, the body of the last answer (the upstream's error JSON).
	Body []byte
	// Problems lists, for StatusInvalidPolicy, every problem of the refused policy.
	Problems []string

	// cause is what made the binding cancel the call (the context's error), for Unwrap.
	cause error
	// sentinel marks the Err* values, which match any Error of their status in errors.Is.
	sentinel bool
}

// Error implements error: "tollgate: <status>: <message>".
func (e *Error) Error() string {
	if e.sentinel {
		return "tollgate: " + e.Status.String()
	}
	msg := e.Message
	if msg == "" {
		msg = e.Code
	}
	return "tollgate: " + e.Status.String() + ": " + msg
}

// Is reports whether target is the sentinel of e's status (ErrDenied for StatusDenied, ...),
// so that errors.Is(err, tollgate.ErrDenied) works on any error chain holding an *Error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.sentinel && t.Status == e.Status
}

// Unwrap returns the cause of a cancellation the binding made itself: the context's error
// (context.Canceled or context.DeadlineExceeded) when the context of Send, Stream or
// AcquireContext ended the call; nil otherwise.
func (e *Error) Unwrap() error { return e.cause }

func sentinel(s Status) *Error { return &Error{Status: s, Code: s.String(), sentinel: true} }

// Sentinels for errors.Is: each matches every *Error of its status.
var (
	ErrInvalidArgument = sentinel(StatusInvalidArgument)
	ErrInvalidUTF8     = sentinel(StatusInvalidUTF8)
	ErrInvalidJSON     = sentinel(StatusInvalidJSON)
	ErrInvalidPolicy   = sentinel(StatusInvalidPolicy)
	ErrIO              = sentinel(StatusIO)
	ErrPanic           = sentinel(StatusPanic)
	ErrWrongThread     = sentinel(StatusWrongThread)
	ErrCancelled       = sentinel(StatusCancelled)
	ErrRuntime         = sentinel(StatusRuntime)
	ErrDenied          = sentinel(StatusDenied)
	ErrGaveUp          = sentinel(StatusGaveUp)
	ErrDeadline        = sentinel(StatusDeadline)
	ErrInvalidRequest  = sentinel(StatusInvalidRequest)
	ErrNoUpstream      = sentinel(StatusNoUpstream)
	ErrAuth            = sentinel(StatusAuth)
	ErrTransport       = sentinel(StatusTransport)
	ErrShared          = sentinel(StatusShared)
	ErrStreamCut       = sentinel(StatusStreamCut)
)

// ErrClosed is returned by every method of an Engine (and of its permits and streams that need
// it) after Engine.Close. It is not an *Error: no C call was made.
var ErrClosed = errors.New("tollgate: engine is closed")

// goString copies a borrowed tg_str into a Go string ("" for NULL / 0).
func goString(s C.tg_str) string {
	if s.ptr == nil || s.len == 0 {
		return ""
	}
	return C.GoStringN(s.ptr, C.int(s.len))
}

// goBytes copies a borrowed tg_str into a new byte slice (nil for NULL / 0).
func goBytes(s C.tg_str) []byte {
	if s.ptr == nil || s.len == 0 {
		return nil
	}
	return C.GoBytes(unsafe.Pointer(s.ptr), C.int(s.len))
}

// takeError copies an owned tg_error into an *Error and frees it. status is the status the
// function returned, used when no error was handed out.
func takeError(status C.tg_status, cerr *C.tg_error) *Error {
	if cerr == nil {
		s := Status(status)
		return &Error{Status: s, Code: s.String(), Message: "(no error details)"}
	}
	defer C.tg_error_free(cerr)
	info := C.tg_go_error_info_of(cerr)
	e := &Error{
		Status:        Status(info.status),
		Code:          goString(info.code),
		Message:       C.GoString(info.message),
		Budget:        goString(info.budget),
		HasRetryAfter: bool(info.has_retry_after),
		HTTPStatus:    int(info.http_status),
		Body:          goBytes(info.body),
	}
	if e.HasRetryAfter {
		e.RetryAfter = nanos(uint64(info.retry_after_ns))
	}
	if n := int(info.problems); n > 0 {
		e.Problems = make([]string, n)
		for i := range e.Problems {
			e.Problems[i] = goString(C.tg_error_problem(cerr, C.size_t(i)))
		}
	}
	return e
}

// nanos converts nanoseconds from C to a Duration, saturating.
func nanos(ns uint64) time.Duration {
	if ns > uint64(1<<63-1) {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(ns)
}

// statusError is a binding-made *Error (no tg_error), e.g. for bad Go-side input.
func statusError(s Status, msg string) *Error {
	return &Error{Status: s, Code: s.String(), Message: msg}
}
