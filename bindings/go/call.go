package tollgate

// #include "shim.h"
import "C"

import (
	"context"
	"encoding/json"
	"runtime"
	"runtime/cgo"
	"sync"
	"time"
)

// Source is where an answer came from (tg_source).
type Source uint32

const (
	SourceUpstream Source = 0 // an upstream answered this call
	SourceCache    Source = 1 // the response cache
	SourceShared   Source = 2 // an identical call in flight at the same time (single-flight)
	SourceStale    Source = 3 // an expired cache entry, served because every target failed
)

// CacheMode is the per-request cache choice (tg_cache_mode).
type CacheMode uint32

const (
	CacheDefault CacheMode = 0 // follow the policy's [cache] rules
	CacheForce   CacheMode = 1 // cache even if temperature, n, tools or a missing seed would not
	CacheBypass  CacheMode = 2 // neither read nor write the cache
)

// Options say who makes a request and how; all optional. A nil *Options means the defaults.
type Options struct {
	Tenant   string // calling tenant, for budgets scoped by tenant
	Route    string // route to use instead of the one matching the model
	Upstream string // upstream to send to when no route applies
	Priority int16  // queue priority among waiting calls (higher first)
	// Deadline is the time the whole call may take (waiting, every attempt, backoff), enforced
	// by tollgate (it then fails with StatusDeadline); 0 for none. A context deadline is
	// separate: when it passes, the call is cancelled (StatusCancelled).
	Deadline  time.Duration
	CacheMode CacheMode
}

// Message is one chat message of a ChatRequest.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ChatRequest is a minimal OpenAI chat-completions request for SendJSON and StreamJSON. Use
// your own struct (or Send with raw JSON) for other fields; tollgate forwards the body as given
// (it sets "stream" itself for streams).
type ChatRequest struct {
	Model       string    `json:"model"`
	Messages    []Message `json:"messages"`
	MaxTokens   int       `json:"max_tokens,omitempty"`
	Temperature *float64  `json:"temperature,omitempty"`
	Seed        *int64    `json:"seed,omitempty"`
}

// AttemptRecord is one earlier attempt of a call that was retried.
type AttemptRecord struct {
	Number   uint32  // 1 for the first attempt
	Outcome  string  // a stable code: "status_503", "timeout_first_byte", "connect_refused", ...
	Decision string  // what was decided after it, in words
	Target   *Target // where it went (routed calls); nil otherwise
}

// Response is an answer of the call API, copied into Go memory. It keeps the C answer only for
// Header lookups, until Free or the garbage collector frees it.
type Response struct {
	Status int    // HTTP status
	Body   []byte // the upstream's JSON; empty for the end of a stream
	Source Source
	// Attempts made (0 for answers from the cache or an identical call).
	Attempts int
	// Queued is the time the call waited for budget room, over every attempt.
	Queued time.Duration
	// Usage is the usage the upstream reported (for a stream: the usage chunk, or the count
	// of the streamed text); nil when none.
	Usage *Usage
	// Settlement is what the call was charged; nil for answers from the cache.
	Settlement *Settlement
	// Target is where the answering attempt went, for routed calls; nil otherwise.
	Target *Target
	// History lists the earlier attempts that failed and were retried.
	History []AttemptRecord

	mu sync.Mutex
	c  *C.tg_response
}

// takeResponse copies an owned tg_response into a Response that keeps it for Header.
func takeResponse(c *C.tg_response) *Response {
	r := &Response{
		Status:   int(C.tg_response_status(c)),
		Body:     goBytes(C.tg_response_body(c)),
		Source:   Source(C.tg_response_source(c)),
		Attempts: int(C.tg_response_attempts(c)),
		Queued:   nanos(uint64(C.tg_response_queued_ns(c))),
		c:        c,
	}
	var u C.tg_usage
	if C.tg_response_usage(c, &u) {
		uu := usageOf(u)
		r.Usage = &uu
	}
	var s C.tg_settlement
	if C.tg_response_settlement(c, &s) {
		ss := settlementOf(&s)
		r.Settlement = &ss
	}
	if t := C.tg_go_response_target(c); t.ok {
		tt := targetOf(&t.target)
		r.Target = &tt
	}
	if n := int(C.tg_response_history_len(c)); n > 0 {
		r.History = make([]AttemptRecord, 0, n)
		for i := 0; i < n; i++ {
			h := C.tg_go_response_history(c, C.size_t(i))
			if !h.ok {
				break
			}
			rec := &h.record
			ar := AttemptRecord{
				Number:   uint32(rec.number),
				Outcome:  goString(rec.outcome),
				Decision: goString(rec.decision),
			}
			if rec.has_target {
				tt := targetOf(&rec.target)
				ar.Target = &tt
			}
			r.History = append(r.History, ar)
		}
	}
	runtime.SetFinalizer(r, (*Response).Free)
	return r
}

// Header returns the first value of a response header (name in any case). Answers from the
// cache have no headers; after Free every lookup fails.
func (r *Response) Header(name string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c == nil {
		return "", false
	}
	h := C.tg_go_response_header(r.c, strPtr(name), C.size_t(len(name)))
	runtime.KeepAlive(name)
	if !h.found {
		return "", false
	}
	return goString(h.value), true
}

// Free frees the C answer kept for Header (the other fields stay). Optional: a finalizer does
// it otherwise. Idempotent.
func (r *Response) Free() {
	r.mu.Lock()
	c := r.c
	r.c = nil
	r.mu.Unlock()
	if c != nil {
		runtime.SetFinalizer(r, nil)
		C.tg_response_free(c)
	}
}

// JSON decodes the body into v.
func (r *Response) JSON(v any) error { return json.Unmarshal(r.Body, v) }

// start starts an asynchronous send or stream with h as user data. The request body and the
// option strings are borrowed for the C call only (tollgate parses them before returning).
func (e *Engine) start(stream bool, request []byte, opts *Options, h cgo.Handle, wantTask bool) (*C.tg_task, error) {
	ptr, err := e.lock()
	if err != nil {
		return nil, err
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	r := C.tg_go_start(ptr, C.bool(stream), bytesPtr(request), C.size_t(len(request)),
		C.bool(opts != nil),
		strPtr(o.Tenant), C.size_t(len(o.Tenant)),
		strPtr(o.Route), C.size_t(len(o.Route)),
		strPtr(o.Upstream), C.size_t(len(o.Upstream)),
		C.int16_t(o.Priority), C.uint64_t(durationMillis(o.Deadline)), C.uint32_t(o.CacheMode),
		C.uintptr_t(h), C.bool(wantTask))
	e.unlock()
	runtime.KeepAlive(request)
	runtime.KeepAlive(opts)
	runtime.KeepAlive(e)
	if r.status != C.TG_STATUS_OK {
		return nil, takeError(r.status, r.err)
	}
	return r.task, nil
}

// final is what the final callback of a call hands over: the answer (send, stream) or the
// permit (acquire), or the error; exactly one is set.
type final struct {
	resp   *C.tg_response
	permit *C.tg_permit
	err    *C.tg_error
}

// finalWaiter receives the one callback of an asynchronous send or acquire.
type finalWaiter struct {
	done chan final // buffered: the callback never blocks
}

func newFinalWaiter() *finalWaiter { return &finalWaiter{done: make(chan final, 1)} }

//export tgGoSendDone
func tgGoSendDone(h C.uintptr_t, resp *C.tg_response, err *C.tg_error) {
	w := cgo.Handle(h).Value().(*finalWaiter)
	w.done <- final{resp: resp, err: err}
}

//export tgGoAcquireDone
func tgGoAcquireDone(h C.uintptr_t, permit *C.tg_permit, err *C.tg_error) {
	w := cgo.Handle(h).Value().(*finalWaiter)
	w.done <- final{permit: permit, err: err}
}

// await waits for the final callback of a call started with w's handle. task is the call's
// handle, or nil when the call was started without one (ctx can never end). When ctx ends first
// it cancels the call (tg_task_cancel) and still waits for the final callback, which tollgate
// fires exactly once, promptly after a cancel; cancelled tells that ctx ended first. The task
// handle is freed. No lock is held: the task outlives its engine (tg_engine_free cancels the
// call, whose callback then fires, and leaves the handle to be freed here).
func await(ctx context.Context, w *finalWaiter, task *C.tg_task) (f final, cancelled bool) {
	if task == nil {
		return <-w.done, false
	}
	select {
	case f = <-w.done:
	case <-ctx.Done():
		C.tg_task_cancel(task)
		f = <-w.done
		cancelled = true
	}
	C.tg_task_free(task)
	return f, cancelled
}

// cancelledBy turns the final error of a call the binding cancelled because ctx ended into an
// *Error that unwraps to ctx.Err().
func cancelledBy(ctx context.Context, e *Error) *Error {
	if e.Status == StatusCancelled && ctx.Err() != nil {
		e.cause = context.Cause(ctx)
		if e.cause == nil {
			e.cause = ctx.Err()
		}
	}
	return e
}

// Send sends a chat request (an OpenAI chat-completions body, JSON) through the whole pipeline
// — cache, admission (waiting where the policy says wait), credentials, transport, retries,
// fallback, accounting — on tollgate's worker threads, and waits for the answer or for ctx.
//
// Errors are *Error values: StatusDenied with the budget, StatusGaveUp with the last HTTP status
// and body, StatusInvalidJSON / StatusInvalidUTF8 / StatusInvalidRequest for bad input, ...
//
// Cancellation: when ctx ends first, Send cancels the call (the upstream connection is closed,
// the concurrency slot freed, the unused reservation refunded), waits for tollgate's final
// callback (it always comes, exactly once, promptly), and returns an *Error of StatusCancelled
// whose Unwrap is the context's error: both errors.Is(err, context.Canceled) (or
// context.DeadlineExceeded) and errors.Is(err, ErrCancelled) hold. If the call had already
// ended, its result is returned as usual. A context that is done before Send starts returns
// the same kind of error without starting the call.
func (e *Engine) Send(ctx context.Context, request []byte, opts *Options) (*Response, error) {
	if ctx.Err() != nil {
		return nil, cancelledBy(ctx, statusError(StatusCancelled, "the context ended before the call started"))
	}
	w := newFinalWaiter()
	h := cgo.NewHandle(w)
	task, err := e.start(false, request, opts, h, ctx.Done() != nil)
	if err != nil {
		h.Delete()
		return nil, err
	}
	f, _ := await(ctx, w, task)
	h.Delete()
	runtime.KeepAlive(e)
	if f.err != nil {
		return nil, cancelledBy(ctx, takeError(C.TG_STATUS_CANCELLED, f.err))
	}
	return takeResponse(f.resp), nil
}

// SendJSON is Send with the request marshalled from v (a ChatRequest or any struct that
// marshals to a chat-completions body).
func (e *Engine) SendJSON(ctx context.Context, v any, opts *Options) (*Response, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return e.Send(ctx, body, opts)
}
