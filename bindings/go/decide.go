package tollgate

// #include <stdlib.h>
// #include <string.h>
// #include "shim.h"
import "C"

import (
	"context"
	"net/http"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// DecisionKind is what Admit decided.
type DecisionKind uint32

const (
	// Go: send the call now, then Settle the permit.
	Go DecisionKind = 0
	// Wait: no room now but the policy allows waiting: admit again after Decision.Wait.
	// Nothing is held.
	Wait DecisionKind = 1
	// Deny: do not send the call; Decision.Denial says why.
	Deny DecisionKind = 2
)

func (k DecisionKind) String() string {
	switch k {
	case Go:
		return "go"
	case Wait:
		return "wait"
	case Deny:
		return "deny"
	}
	return "unknown"
}

// VerdictKind is what Settle decided.
type VerdictKind uint32

const (
	// Done: the call is finished.
	Done VerdictKind = 0
	// Retry: admit again after Verdict.RetryAfter with Verdict.Attempt in Call.Attempt.
	Retry VerdictKind = 1
	// GiveUp: the call failed and will not be retried; Verdict.GiveUp says why.
	GiveUp VerdictKind = 2
)

func (k VerdictKind) String() string {
	switch k {
	case Done:
		return "done"
	case Retry:
		return "retry"
	case GiveUp:
		return "give_up"
	}
	return "unknown"
}

// Limit is the limit of a budget that had no room (tg_limit).
type Limit uint32

// The limits, with the numbers of tg_limit.
const (
	LimitNone              Limit = 0 // concurrency, a queue of earlier calls, or no budget
	LimitRequestsPerSecond Limit = 1
	LimitRequestsPerMinute Limit = 2
	LimitRequestsPerHour   Limit = 3
	LimitRequestsPerDay    Limit = 4
	LimitTokensPerMinute   Limit = 5
	LimitTokensPerHour     Limit = 6
	LimitTokensPerDay      Limit = 7
	LimitSpendPerDay       Limit = 8
	LimitSpendPerMonth     Limit = 9
)

// PromptKind says how Call.Prompt is given (tg_prompt_kind).
type PromptKind uint32

const (
	// PromptTokens: Call.PromptTokens holds the prompt's token count.
	PromptTokens PromptKind = 0
	// PromptText: Call.Prompt is the prompt text, counted with the model's tokenizer.
	PromptText PromptKind = 1
	// PromptRequest: Call.Prompt is an OpenAI chat-completions request body (JSON); messages,
	// tools and max_tokens are read from it.
	PromptRequest PromptKind = 2
)

// Failure is the transport failure that ended an attempt without a usable response
// (tg_failure).
type Failure uint32

// The failures, with the numbers of tg_failure.
const (
	FailureNone             Failure = 0
	FailureConnectRefused   Failure = 1
	FailureConnectReset     Failure = 2
	FailureConnectDNS       Failure = 3
	FailureConnectTLS       Failure = 4
	FailureConnectOther     Failure = 5
	FailureTimeoutConnect   Failure = 6
	FailureTimeoutFirstByte Failure = 7
	FailureTimeoutIdle      Failure = 8
	FailureTimeoutTotal     Failure = 9
	FailureMalformed        Failure = 10
	FailureCutStream        Failure = 11
)

// Usage is token usage as the upstream reported it.
type Usage struct {
	PromptTokens       uint64 // cached ones included
	CompletionTokens   uint64 // reasoning tokens included
	TotalTokens        uint64
	CachedPromptTokens uint64
	ReasoningTokens    uint64
}

func usageOf(u C.tg_usage) Usage {
	return Usage{
		PromptTokens:       uint64(u.prompt_tokens),
		CompletionTokens:   uint64(u.completion_tokens),
		TotalTokens:        uint64(u.total_tokens),
		CachedPromptTokens: uint64(u.cached_prompt_tokens),
		ReasoningTokens:    uint64(u.reasoning_tokens),
	}
}

// Settlement is what a settled attempt (or a call of the call API) was charged.
type Settlement struct {
	ReservedTokens uint64 // reserved at admission (prompt estimate plus completion allowance)
	Tokens         uint64 // charged: the usage, the reservation when unknown, 0 when not sent
	HasUsage       bool   // whether Usage holds reported usage
	Usage          Usage
	HasCost        bool    // whether the cost fields hold a cost (usage and price known)
	CostInput      float64 // uncached prompt tokens × input price
	CostCached     float64 // cached prompt tokens × cached-input price
	CostOutput     float64 // completion tokens × output price
	Spend          float64 // money charged against spend budgets
}

func settlementOf(s *C.tg_settlement) Settlement {
	return Settlement{
		ReservedTokens: uint64(s.reserved_tokens),
		Tokens:         uint64(s.tokens),
		HasUsage:       bool(s.has_usage),
		Usage:          usageOf(s.usage),
		HasCost:        bool(s.has_cost),
		CostInput:      float64(s.cost_input),
		CostCached:     float64(s.cost_cached_input),
		CostOutput:     float64(s.cost_output),
		Spend:          float64(s.spend),
	}
}

// Target is where an attempt goes, for calls routed by the policy's [[route]]s.
type Target struct {
	Route    string
	Upstream string
	Model    string
	Key      string // pool key id (the variable name of env:NAME), never the secret
}

func targetOf(t *C.tg_target) Target {
	return Target{
		Route:    goString(t.route),
		Upstream: goString(t.upstream),
		Model:    goString(t.model),
		Key:      goString(t.key),
	}
}

// Call is one call to admit: who makes it, to which model, and how big it is. The zero value is
// a valid call (empty names, a prompt of 0 tokens).
type Call struct {
	Tenant   string // budgets scoped by tenant
	Model    string
	Upstream string // when the host knows it
	Key      string // API key name (or key-pool member)
	Route    string
	Priority int16 // higher goes first among waiting calls

	PromptKind   PromptKind
	PromptTokens uint64 // PromptTokens: the prompt's token count
	Prompt       string // PromptText: the text; PromptRequest: the request JSON

	// MaxTokens is the completion allowance; 0 means unset (the request's own max_tokens, else
	// the policy's defaults.max_completion_tokens).
	MaxTokens uint64
	// Deadline is the time the whole call (every attempt) may take from its first admission;
	// 0 for none.
	Deadline time.Duration
	// Attempt is, for a retry, the Attempt of the previous Retry verdict (borrowed for the
	// call of Admit; free it yourself afterwards). nil for a first attempt.
	Attempt *Attempt
}

// Decision is the answer of Admit.
type Decision struct {
	Kind DecisionKind
	// Permit (Go) is the admitted call's hold on its budgets: Settle it, or Free it if the call
	// was not made.
	Permit *Permit
	// Wait is, for Wait, when to admit again; for Deny, when the same call could pass (0 when
	// unknown).
	Wait time.Duration
	// Budget is, for Wait and Deny, the deciding budget (empty when no budget decided).
	Budget string
	// Limit is, for Wait and Deny, the limit that had no room (LimitNone for concurrency).
	Limit Limit
	// Denial is, for Deny, the refusal: StatusDenied, Code "budget_exhausted",
	// "concurrency", ..., and the budget.
	Denial *Error
}

// Err is the denial as an error (nil unless Kind is Deny).
func (d Decision) Err() error {
	if d.Denial == nil {
		return nil
	}
	return d.Denial
}

// Permit is an admitted call's hold on its budgets (a concurrency slot and reservations). Settle
// it with Engine.Settle, or Free it when the call was not made (releasing the slot and refunding
// the reservations). A finalizer frees a forgotten permit, but the slot stays taken until the
// garbage collector finds it (and the other permits of its slab) unreachable: always Settle or
// Free. A Permit is not for concurrent use.
type Permit struct {
	p unsafe.Pointer // *C.tg_permit; nil once settled or freed (atomic)
}

// Permits are allocated in slabs of permitSlabSize with one finalizer per slab (after
// wasmtime-go's slab.go idea of amortising per-object bookkeeping): a finalizer per permit costs
// more than the admit itself. A Permit points into its slab, so the slab lives while any of its
// permits is reachable; when none is, the slab's finalizer frees the C permits nobody settled or
// freed. The allocator lets go of its current slab after every garbage collection (gcHook), so
// that a forgotten permit is freed within a few collections even when no more permits are made
// (e.g. a concurrency budget of 1 whose only slot was leaked).
const permitSlabSize = 64

type permitSlab struct {
	permits [permitSlabSize]Permit
}

func (s *permitSlab) free() {
	// The slots were filled under the allocator's lock: taking it orders those writes before
	// these reads (for the race detector too).
	permitSlabs.mu.Lock()
	permitSlabs.mu.Unlock()
	for i := range s.permits {
		s.permits[i].Free()
	}
}

var permitSlabs struct {
	mu     sync.Mutex
	cur    *permitSlab
	next   int
	hooked bool
}

// gcSentinel is an object whose finalizer runs once after each garbage collection (it re-arms
// itself). 16 bytes: smaller pointer-free objects may share a tiny-allocator block, whose
// finalizers are not guaranteed to run.
type gcSentinel struct{ _ [16]byte }

func gcHook(*gcSentinel) {
	permitSlabs.mu.Lock()
	permitSlabs.cur = nil
	permitSlabs.mu.Unlock()
	runtime.SetFinalizer(new(gcSentinel), gcHook)
}

func newPermit(p *C.tg_permit) *Permit {
	a := &permitSlabs
	a.mu.Lock()
	if a.cur == nil || a.next == permitSlabSize {
		a.cur = new(permitSlab)
		runtime.SetFinalizer(a.cur, (*permitSlab).free)
		a.next = 0
		if !a.hooked {
			a.hooked = true
			runtime.SetFinalizer(new(gcSentinel), gcHook)
		}
	}
	pm := &a.cur.permits[a.next]
	a.next++
	pm.p = unsafe.Pointer(p) // a fresh slot, published only by returning it
	a.mu.Unlock()
	return pm
}

// take hands the C permit over (once): nil when it was settled or freed already.
func (p *Permit) take() *C.tg_permit {
	if p == nil {
		return nil
	}
	return (*C.tg_permit)(atomic.SwapPointer(&p.p, nil))
}

func (p *Permit) permit() *C.tg_permit { return (*C.tg_permit)(atomic.LoadPointer(&p.p)) }

// Free releases the permit without settling: as for a call that was never sent. Freeing a
// settled or freed permit (or nil) does nothing.
func (p *Permit) Free() {
	if c := p.take(); c != nil {
		C.tg_permit_free(c)
	}
}

// PromptTokens is the number of prompt tokens the permit reserved (0 once settled or freed).
func (p *Permit) PromptTokens() uint64 {
	n := C.tg_permit_prompt_tokens(p.permit())
	runtime.KeepAlive(p)
	return uint64(n)
}

// ReservedTokens is the number of tokens the permit reserved in all (prompt plus completion
// allowance).
func (p *Permit) ReservedTokens() uint64 {
	n := C.tg_permit_reserved_tokens(p.permit())
	runtime.KeepAlive(p)
	return uint64(n)
}

// EstimatedCost is the call's estimated cost at admission (what spend budgets reserve); 0 when
// the model has no price.
func (p *Permit) EstimatedCost() float64 {
	c := C.tg_permit_estimated_cost(p.permit())
	runtime.KeepAlive(p)
	return float64(c)
}

// Target is where the admitted attempt should go, when the policy routed the call.
func (p *Permit) Target() (Target, bool) {
	r := C.tg_go_permit_target(p.permit())
	runtime.KeepAlive(p)
	if !r.ok {
		return Target{}, false
	}
	return targetOf(&r.target), true
}

// Attempt is the state a retried call carries to its next admission (attempt number, deadline,
// next target, history). Put it in Call.Attempt when admitting the retry, then Free it.
type Attempt struct {
	p unsafe.Pointer // *C.tg_attempt; nil once freed (atomic)
}

func newAttempt(a *C.tg_attempt) *Attempt {
	at := &Attempt{p: unsafe.Pointer(a)}
	runtime.SetFinalizer(at, (*Attempt).Free)
	return at
}

func (a *Attempt) attempt() *C.tg_attempt { return (*C.tg_attempt)(atomic.LoadPointer(&a.p)) }

// Free frees the attempt. Freeing twice (or nil) does nothing.
func (a *Attempt) Free() {
	if a == nil {
		return
	}
	if c := (*C.tg_attempt)(atomic.SwapPointer(&a.p, nil)); c != nil {
		runtime.SetFinalizer(a, nil)
		C.tg_attempt_free(c)
	}
}

// Number is the number of the attempt this state is for (2 for the first retry).
func (a *Attempt) Number() uint32 {
	n := C.tg_attempt_number(a.attempt())
	runtime.KeepAlive(a)
	return uint32(n)
}

// Target is where the retry should go, when the engine chose a target (a fallback, another key).
func (a *Attempt) Target() (Target, bool) {
	r := C.tg_go_attempt_target(a.attempt())
	runtime.KeepAlive(a)
	if !r.ok {
		return Target{}, false
	}
	return targetOf(&r.target), true
}

// Outcome is what happened to an admitted attempt, for Settle. The zero value means "not sent"
// (everything reserved is refunded).
type Outcome struct {
	Sent   bool // whether the request left the host
	Status int  // HTTP status of the response; 0 when no response head arrived
	// Usage is the usage the response reported; nil when none.
	Usage *Usage
	// Latency is the time from send to the end of the response; 0 when unknown.
	Latency time.Duration
	Failure Failure
	// Header holds the response headers (Retry-After, retry-after-ms, x-ratelimit-*,
	// x-should-retry are read); nil when none.
	Header http.Header
	// ContentDelivered tells that content already reached the caller (a stream): then the call
	// is never retried.
	ContentDelivered bool
}

// Verdict is the answer of Settle.
type Verdict struct {
	Kind       VerdictKind
	Settlement Settlement    // every kind
	RetryAfter time.Duration // Retry: wait this long first
	// Attempt (Retry) is the state of the next attempt: put it in Call.Attempt, then Free it.
	Attempt *Attempt
	// GiveUp (GiveUp) says why: StatusGaveUp, Code "attempts_exhausted", "not_retryable", ...
	GiveUp *Error
}

// Err is the give-up as an error (nil unless Kind is GiveUp).
func (v Verdict) Err() error {
	if v.GiveUp == nil {
		return nil
	}
	return v.GiveUp
}

// Admit decides whether a call may go now. Go reserves its estimated requests, tokens and money
// in every matching budget and holds a concurrency slot (all or nothing); Wait holds nothing;
// Deny says which budget refused and why. It never blocks. Errors (the call is then not
// admitted): text that is not UTF-8, an unknown PromptKind, a request body that is not JSON,
// ErrClosed.
func (e *Engine) Admit(call Call) (Decision, error) {
	ptr, err := e.lock()
	if err != nil {
		return Decision{}, err
	}
	var attempt *C.tg_attempt
	if call.Attempt != nil {
		attempt = call.Attempt.attempt()
	}
	maxTokens := call.MaxTokens
	r := C.tg_go_admit(handle(unsafe.Pointer(ptr)),
		strPtr(call.Tenant), C.size_t(len(call.Tenant)),
		strPtr(call.Model), C.size_t(len(call.Model)),
		strPtr(call.Upstream), C.size_t(len(call.Upstream)),
		strPtr(call.Key), C.size_t(len(call.Key)),
		strPtr(call.Route), C.size_t(len(call.Route)),
		C.int16_t(call.Priority), C.uint32_t(call.PromptKind), C.uint64_t(call.PromptTokens),
		strPtr(call.Prompt), C.size_t(len(call.Prompt)),
		C.bool(maxTokens != 0), C.uint64_t(maxTokens),
		C.uint64_t(durationMillis(call.Deadline)), handle(unsafe.Pointer(attempt)))
	e.unlock()
	runtime.KeepAlive(call.Attempt)
	runtime.KeepAlive(e)
	if r.status != C.TG_STATUS_OK {
		return Decision{}, takeError(r.status, r.err)
	}
	return decisionOf(&r.decision), nil
}

func decisionOf(d *C.tg_decision) Decision {
	out := Decision{Kind: DecisionKind(d.kind)}
	switch out.Kind {
	case Go:
		out.Permit = newPermit(d.permit)
	default:
		out.Wait = nanos(uint64(d.after_ns))
		out.Budget = goString(d.budget) // before the denial (which owns it) is freed
		out.Limit = Limit(d.limit)
		if d.denial != nil {
			out.Denial = takeError(C.TG_STATUS_DENIED, d.denial)
		}
		if d.permit != nil { // not for WAIT / DENY; never leak one
			C.tg_permit_free(d.permit)
		}
	}
	return out
}

// Acquire is AcquireContext with context.Background(): it waits as long as the policy allows,
// and only Close (or the policy's limits) can end the wait early.
func (e *Engine) Acquire(call Call) (*Permit, error) {
	return e.AcquireContext(context.Background(), call)
}

// AcquireContext admits a call, waiting in the budgets' priority queues as long as the policy
// allows (when_exhausted = { wait_up_to = ... }) and for route targets passed over for a known
// time (an open circuit breaker) up to retry.max_retry_after. The wait runs on tollgate's worker
// threads (tg_engine_acquire_async): the goroutine waits on a channel, holds no lock and no OS
// thread, and other calls and Close go on meanwhile. A refusal is an *Error of StatusDenied
// (Code "budget_exhausted", "concurrency", "wait_timeout", "unavailable", ...).
//
// Cancellation: when ctx ends first, the call leaves the queues, takes nothing (no slot, no
// reservation), and AcquireContext returns an *Error of StatusCancelled that unwraps to the
// context's error: errors.Is(err, context.Canceled) (or context.DeadlineExceeded) and
// errors.Is(err, ErrCancelled) hold. This holds even when the permit arrives as ctx ends: it is
// then freed. A context that is done before the call starts gives the same error without
// admitting anything. Close cancels waiting calls: they return an *Error of StatusCancelled
// without a context cause.
func (e *Engine) AcquireContext(ctx context.Context, call Call) (*Permit, error) {
	if ctx.Err() != nil {
		return nil, cancelledBy(ctx, statusError(StatusCancelled, "the context ended before the call was admitted"))
	}
	w := newFinalWaiter()
	h := cgo.NewHandle(w)
	// Deleted after the final callback, or when the start failed (then it never comes).
	defer h.Delete()
	ptr, err := e.lock()
	if err != nil {
		return nil, err
	}
	var attempt *C.tg_attempt
	if call.Attempt != nil {
		attempt = call.Attempt.attempt()
	}
	// The lock is held only to start the call: tollgate copies the call's strings and attempt
	// before returning.
	r := C.tg_go_acquire_async(handle(unsafe.Pointer(ptr)),
		strPtr(call.Tenant), C.size_t(len(call.Tenant)),
		strPtr(call.Model), C.size_t(len(call.Model)),
		strPtr(call.Upstream), C.size_t(len(call.Upstream)),
		strPtr(call.Key), C.size_t(len(call.Key)),
		strPtr(call.Route), C.size_t(len(call.Route)),
		C.int16_t(call.Priority), C.uint32_t(call.PromptKind), C.uint64_t(call.PromptTokens),
		strPtr(call.Prompt), C.size_t(len(call.Prompt)),
		C.bool(call.MaxTokens != 0), C.uint64_t(call.MaxTokens),
		C.uint64_t(durationMillis(call.Deadline)), handle(unsafe.Pointer(attempt)),
		C.uintptr_t(h), C.bool(ctx.Done() != nil))
	e.unlock()
	runtime.KeepAlive(call.Attempt) // passed as an integer: its finalizer must not run before this
	if r.status != C.TG_STATUS_OK {
		return nil, takeError(r.status, r.err)
	}
	f, cancelled := await(ctx, w, r.task)
	runtime.KeepAlive(e)
	if f.err != nil {
		return nil, cancelledBy(ctx, takeError(C.TG_STATUS_CANCELLED, f.err))
	}
	if cancelled {
		// Admitted while the cancel was on its way: ctx ended first, so the call takes nothing.
		C.tg_permit_free(f.permit)
		return nil, cancelledBy(ctx, statusError(StatusCancelled, "the context ended while the call waited for admission"))
	}
	return newPermit(f.permit), nil
}

// Settle tells the engine how an admitted attempt went and returns the verdict: done, retry
// (after a delay, maybe on another target) or give up. Settling replaces the reservation by the
// actual usage, releases the concurrency slot, feeds the circuit breaker and the retry budget,
// and honours the server's rate-limit headers. The permit is consumed in every case, also when
// an error is returned; settling a permit twice returns an *Error of StatusInvalidArgument.
// After Close it frees the permit and returns ErrClosed.
func (e *Engine) Settle(p *Permit, o Outcome) (Verdict, error) {
	c := p.take()
	if c == nil {
		return Verdict{}, statusError(StatusInvalidArgument, "the permit was settled or freed already")
	}
	ptr, err := e.lock()
	if err != nil {
		C.tg_permit_free(c)
		return Verdict{}, err
	}
	var u Usage
	if o.Usage != nil {
		u = *o.Usage
	}
	var headers unsafe.Pointer // C memory
	var nh int
	if len(o.Header) > 0 {
		headers, nh = cHeaders(o.Header)
	}
	r := C.tg_go_settle(handle(unsafe.Pointer(ptr)), handle(unsafe.Pointer(c)), C.bool(o.Sent), C.uint16_t(o.Status), C.bool(o.Usage != nil),
		C.uint64_t(u.PromptTokens), C.uint64_t(u.CompletionTokens), C.uint64_t(u.TotalTokens),
		C.uint64_t(u.CachedPromptTokens), C.uint64_t(u.ReasoningTokens),
		C.uint64_t(durationNanos(o.Latency)), C.uint32_t(o.Failure), handle(headers), C.size_t(nh),
		C.bool(o.ContentDelivered))
	e.unlock()
	runtime.KeepAlive(e)
	if headers != nil {
		C.free(headers)
	}
	if r.status != C.TG_STATUS_OK {
		return Verdict{}, takeError(r.status, r.err)
	}
	v := Verdict{
		Kind:       VerdictKind(r.verdict.kind),
		Settlement: settlementOf(&r.verdict.settlement),
		RetryAfter: nanos(uint64(r.verdict.retry_after_ns)),
	}
	if r.verdict.attempt != nil {
		v.Attempt = newAttempt(r.verdict.attempt)
	}
	if r.verdict.give_up != nil {
		v.GiveUp = takeError(C.TG_STATUS_GAVE_UP, r.verdict.give_up)
	}
	return v, nil
}

// cHeaders copies h into one C allocation: the tg_header array followed by the bytes of every
// name and value. Free it with C.free.
func cHeaders(h http.Header) (unsafe.Pointer, int) {
	n, size := 0, 0
	for name, values := range h {
		for _, v := range values {
			n++
			size += len(name) + len(v)
		}
	}
	if n == 0 {
		return nil, 0
	}
	hdrSize := n * int(unsafe.Sizeof(C.tg_header{}))
	block := C.malloc(C.size_t(hdrSize + size))
	if block == nil {
		panic("tollgate: out of memory")
	}
	arr := unsafe.Slice((*C.tg_header)(block), n)
	data := unsafe.Slice((*byte)(unsafe.Add(block, hdrSize)), size)
	i, off := 0, 0
	for name, values := range h {
		for _, v := range values {
			arr[i].name = copyIn(data, &off, name)
			arr[i].value = copyIn(data, &off, v)
			i++
		}
	}
	return block, n
}

// copyIn copies s into data at *off (advancing it) and returns the C view of the copy.
func copyIn(data []byte, off *int, s string) C.tg_str {
	if len(s) == 0 {
		return C.tg_str{}
	}
	copy(data[*off:], s)
	v := C.tg_str{ptr: (*C.char)(unsafe.Pointer(&data[*off])), len: C.size_t(len(s))}
	*off += len(s)
	return v
}

// handle passes a C pointer to a shim function as an integer (see shim.h).
func handle(p unsafe.Pointer) C.uintptr_t { return C.uintptr_t(uintptr(p)) }

func durationMillis(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	ms := uint64((d + time.Millisecond - 1) / time.Millisecond)
	return ms
}

func durationNanos(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64(d)
}
