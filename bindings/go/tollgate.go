// Package tollgate is the Go binding of tollgate, a client-side policy engine for LLM API calls
// (budgets, retries, fallbacks, caching, accounting), over its C ABI (tollgate.h) and
// the library libtollgate (static by default; see link_*.go).
//
// An Engine holds a policy. Hosts with their own HTTP client ask it before each call
// (Engine.Admit) and tell it how the call went (Engine.Settle); hosts that let tollgate make the
// call use Engine.Send and Engine.Stream, which take a context.Context: cancelling it cancels
// the call.
//
// Memory and threads: every value this package returns is Go memory (copied out of the C
// library), except the handles Permit, Attempt, Response (for header lookups) and Stream,
// which own C objects; they have Free/Close methods and finalizers as a safety net. No Go
// pointer is ever kept by C: asynchronous calls pass a runtime/cgo.Handle (an integer) as the
// callback's user data, and callbacks reach Go through //export functions. An Engine is safe
// for use by any number of goroutines; Close waits for the C calls in progress and makes later
// ones return ErrClosed.
package tollgate

// #cgo CFLAGS: -O2
// #include <stdlib.h>
// #include "shim.h"
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// Version is the version of the linked library (tg_version), e.g. "0.1.0".
func Version() string { return C.GoString(C.tg_version()) }

// HeaderVersion is the version of the header this binding was compiled against. It differs from
// Version when the library and tollgate.h come from different builds.
func HeaderVersion() string {
	return fmt.Sprintf("%d.%d.%d", int(C.TOLLGATE_VERSION_MAJOR), int(C.TOLLGATE_VERSION_MINOR),
		int(C.TOLLGATE_VERSION_PATCH))
}

// Engine is a running policy with its budget, breaker and cache state, the transport and the
// worker threads of the call API (tg_engine). Create it with New or NewFromFile and Close it when
// done (a finalizer closes an unreachable engine, but do not rely on it: the worker threads and
// budget state live until then).
//
// All methods may be called from any number of goroutines at once.
type Engine struct {
	// mu guards ptr: every C call that takes the engine holds a read lock for the call's
	// duration (never while waiting for an asynchronous answer), Close takes the write lock,
	// so Close waits for the calls in progress and no call sees a freed engine.
	mu  sync.RWMutex
	ptr *C.tg_engine
	// closing is closed when Close starts: stream callbacks stop waiting for slow consumers,
	// so freeing the engine (which cancels running calls) cannot hang on them.
	closing   chan struct{}
	closeOnce sync.Once
}

func newEngine(ptr *C.tg_engine) *Engine {
	e := &Engine{ptr: ptr, closing: make(chan struct{})}
	runtime.SetFinalizer(e, (*Engine).Close)
	return e
}

// New creates an engine from policy text, TOML or JSON (detected). A policy with problems is
// refused with an *Error of StatusInvalidPolicy listing every problem in Problems; text that is
// not UTF-8 gives StatusInvalidUTF8.
func New(policy string) (*Engine, error) {
	r := C.tg_go_engine_new(strPtrU8(policy), C.size_t(len(policy)))
	runtime.KeepAlive(policy)
	if r.status != C.TG_STATUS_OK {
		return nil, takeError(r.status, r.err)
	}
	return newEngine(r.engine), nil
}

// NewFromFile creates an engine from a policy file: .json is read as JSON, .toml as TOML,
// anything else is detected. An unreadable file gives StatusIO.
func NewFromFile(path string) (*Engine, error) {
	r := C.tg_go_engine_new_from_file(strPtr(path), C.size_t(len(path)))
	runtime.KeepAlive(path)
	if r.status != C.TG_STATUS_OK {
		return nil, takeError(r.status, r.err)
	}
	return newEngine(r.engine), nil
}

// lock returns the live engine pointer under a read lock, or ErrClosed. Release with unlock.
func (e *Engine) lock() (*C.tg_engine, error) {
	e.mu.RLock()
	if e.ptr == nil {
		e.mu.RUnlock()
		return nil, ErrClosed
	}
	return e.ptr, nil
}

func (e *Engine) unlock() { e.mu.RUnlock() }

// Close frees the engine. Calls still running (Send, Stream, and Acquire / AcquireContext
// waiting for admission) are cancelled: they return an *Error of StatusCancelled. Close waits for the C calls in progress on other goroutines, then
// every later method returns ErrClosed. Permits outstanding stay valid for Free (settling needs
// the engine, so it returns ErrClosed after freeing the permit). Close is idempotent and always
// returns nil.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() { close(e.closing) })
	e.mu.Lock()
	ptr := e.ptr
	e.ptr = nil
	e.mu.Unlock()
	if ptr != nil {
		runtime.SetFinalizer(e, nil)
		// Outside the lock: freeing fires the final callbacks of running calls (Cancelled),
		// which never take the lock, and waits for tollgate's worker threads to stop.
		C.tg_engine_free(ptr)
	}
	return nil
}

// Reload replaces the running policy with policy (TOML or JSON text) without dropping a call:
// budget state is kept for every budget whose name and scope are unchanged, and new limits apply
// from the next decision. It returns the new policy generation (1 for the first policy, +1 per
// accepted reload). A refused policy returns an *Error of StatusInvalidPolicy with every problem
// in Problems, and the running policy stays.
func (e *Engine) Reload(policy string) (uint64, error) {
	ptr, err := e.lock()
	if err != nil {
		return 0, err
	}
	r := C.tg_go_reload(ptr, strPtrU8(policy), C.size_t(len(policy)))
	e.unlock()
	runtime.KeepAlive(policy)
	runtime.KeepAlive(e)
	if r.status != C.TG_STATUS_OK {
		return 0, takeError(r.status, r.err)
	}
	return uint64(r.generation), nil
}

// ReloadFile is Reload with the policy read from a file (the file rules of NewFromFile).
func (e *Engine) ReloadFile(path string) (uint64, error) {
	ptr, err := e.lock()
	if err != nil {
		return 0, err
	}
	r := C.tg_go_reload_file(ptr, strPtr(path), C.size_t(len(path)))
	e.unlock()
	runtime.KeepAlive(path)
	runtime.KeepAlive(e)
	if r.status != C.TG_STATUS_OK {
		return 0, takeError(r.status, r.err)
	}
	return uint64(r.generation), nil
}

// Generation is the number of accepted policies so far (1 after New); 0 after Close.
func (e *Engine) Generation() uint64 {
	ptr, err := e.lock()
	if err != nil {
		return 0
	}
	g := C.tg_engine_generation(ptr)
	e.unlock()
	runtime.KeepAlive(e)
	return uint64(g)
}

// Metrics returns the engine's metrics in the Prometheus text format (version 0.0.4).
func (e *Engine) Metrics() (string, error) {
	ptr, err := e.lock()
	if err != nil {
		return "", err
	}
	r := C.tg_go_metrics(ptr)
	e.unlock()
	runtime.KeepAlive(e)
	if r.status != C.TG_STATUS_OK {
		return "", takeError(r.status, r.err)
	}
	defer C.tg_bytes_free(r.bytes)
	if r.bytes.len == 0 {
		return "", nil
	}
	return C.GoStringN((*C.char)(unsafe.Pointer(r.bytes.data)), C.int(r.bytes.len)), nil
}

// strPtr is the C view of a Go string's bytes for the duration of one C call: a Go pointer to
// memory without Go pointers, which cgo allows as an argument (nil for the empty string).
func strPtr(s string) *C.char {
	if len(s) == 0 {
		return nil
	}
	return (*C.char)(unsafe.Pointer(unsafe.StringData(s)))
}

func strPtrU8(s string) *C.uint8_t {
	if len(s) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(unsafe.StringData(s)))
}

func bytesPtr(b []byte) *C.uint8_t {
	if len(b) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0]))
}
