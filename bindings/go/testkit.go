//go:build tollgate_testkit

package tollgate

// The test upstream of a library built with the `testkit` feature (cargo build --release
// -p tollgate-capi --features testkit; release libraries leave it off): only with
// -tags tollgate_testkit, so that a library without the feature still links.

/*
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include "shim.h"
#include "tollgate_testkit.h"

typedef struct tg_go_upstream_result {
  tg_status status;
  tg_test_upstream *upstream;
  tg_error *err;
} tg_go_upstream_result;

// Starts the test upstream with SIGPIPE blocked on the calling thread, so that its server
// threads (which inherit the mask) never take SIGPIPE when a client goes away (see shim.c).
static tg_go_upstream_result tg_go_test_upstream_start(const uint8_t *options, size_t len) {
  tg_go_upstream_result r;
  memset(&r, 0, sizeof r);
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  int masked = pthread_sigmask(SIG_BLOCK, &block, &old) == 0;
  r.status = tg_test_upstream_start(options, len, &r.upstream, &r.err);
  if (masked) pthread_sigmask(SIG_SETMASK, &old, NULL);
  return r;
}

// n admit + settle pairs in C, for the benchmark's baseline without cgo (the C host's cost).
static tg_status tg_go_bench_pairs(const tg_engine *engine, const char *tenant, size_t tenant_len,
                                   const char *model, size_t model_len, uint64_t prompt_tokens,
                                   uint64_t n) {
  tg_call call;
  memset(&call, 0, sizeof call);
  call.tenant.ptr = tenant_len ? tenant : NULL;
  call.tenant.len = tenant_len;
  call.model.ptr = model_len ? model : NULL;
  call.model.len = model_len;
  call.prompt_tokens = prompt_tokens;
  tg_outcome o;
  memset(&o, 0, sizeof o);
  o.sent = true;
  o.status = 200;
  o.has_usage = true;
  o.usage.prompt_tokens = 10;
  o.usage.completion_tokens = 5;
  o.usage.total_tokens = 15;
  for (uint64_t i = 0; i < n; i++) {
    tg_decision d;
    tg_status st = tg_engine_admit(engine, &call, &d, NULL);
    if (st != TG_STATUS_OK) return st;
    if (d.kind != TG_DECISION_KIND_GO) {
      tg_error_free(d.denial);
      return TG_STATUS_DENIED;
    }
    tg_verdict v;
    st = tg_engine_settle(engine, d.permit, &o, &v, NULL);
    if (st != TG_STATUS_OK) return st;
    tg_attempt_free(v.attempt);
    tg_error_free(v.give_up);
  }
  return TG_STATUS_OK;
}
*/
import "C"

import (
	"runtime"
	"sync"
)

// TestUpstream is a fault-injecting OpenAI-compatible server on 127.0.0.1 with its own threads
// (tg_test_upstream), for tests and benchmarks. Only with -tags tollgate_testkit.
type TestUpstream struct {
	mu  sync.RWMutex
	ptr *C.tg_test_upstream
	url string
}

// StartTestUpstream starts a test upstream on a free port of 127.0.0.1. options is JSON ("" for
// the defaults): {"latency_ms": 0, "drip_ms": 0, "words": 16, "event_ids": false, "seed": 1,
// "models": ["gpt-4o-mini", ...]}.
func StartTestUpstream(options string) (*TestUpstream, error) {
	r := C.tg_go_test_upstream_start(strPtrU8(options), C.size_t(len(options)))
	runtime.KeepAlive(options)
	if r.status != C.TG_STATUS_OK {
		return nil, takeError(r.status, r.err)
	}
	u := &TestUpstream{ptr: r.upstream, url: C.GoString(C.tg_test_upstream_base_url(r.upstream))}
	runtime.SetFinalizer(u, (*TestUpstream).Close)
	return u, nil
}

// URL is the base URL, http://127.0.0.1:PORT/v1.
func (u *TestUpstream) URL() string { return u.url }

// Script scripts the next matching requests, e.g. {"actions": ["503", "normal"]} or
// {"match": {"stream": true}, "actions": ["cut:3"]}. Actions: normal, 500, 503,
// 429:<Retry-After s>, status:<code>, reset, cut:<events>, malformed, latency:<ms>,
// slow_first_byte:<ms>, slow_drip:<ms>.
func (u *TestUpstream) Script(script string) error {
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.ptr == nil {
		return ErrClosed
	}
	var cerr *C.tg_error
	st := C.tg_test_upstream_script(u.ptr, strPtrU8(script), C.size_t(len(script)), &cerr)
	runtime.KeepAlive(script)
	if st != C.TG_STATUS_OK {
		return takeError(st, cerr)
	}
	return nil
}

// Requests is how many requests the upstream has received so far.
func (u *TestUpstream) Requests() uint64 {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return uint64(C.tg_test_upstream_requests(u.ptr))
}

// Close stops the upstream. Idempotent.
func (u *TestUpstream) Close() error {
	u.mu.Lock()
	p := u.ptr
	u.ptr = nil
	u.mu.Unlock()
	if p != nil {
		runtime.SetFinalizer(u, nil)
		C.tg_test_upstream_free(p)
	}
	return nil
}

// TestPanic makes the library panic inside its panic boundary (tg_test_panic) and returns the
// resulting *Error (StatusPanic): a bug inside tollgate reaches Go as an error, not a crash.
func TestPanic() error {
	var cerr *C.tg_error
	st := C.tg_test_panic(&cerr)
	if st == C.TG_STATUS_OK {
		return nil
	}
	return takeError(st, cerr)
}

// AdmitSettleLoopC makes n admit + settle pairs (a call of promptTokens tokens, settled as a 200
// with 10 + 5 tokens) in one C loop: the cost of the pair for a C host, without cgo, as the
// baseline of BenchmarkAdmitSettle. Only with -tags tollgate_testkit.
func AdmitSettleLoopC(e *Engine, tenant, model string, promptTokens uint64, n int) error {
	ptr, err := e.lock()
	if err != nil {
		return err
	}
	st := C.tg_go_bench_pairs(ptr, strPtr(tenant), C.size_t(len(tenant)), strPtr(model),
		C.size_t(len(model)), C.uint64_t(promptTokens), C.uint64_t(n))
	e.unlock()
	runtime.KeepAlive(tenant)
	runtime.KeepAlive(model)
	if st != C.TG_STATUS_OK {
		return statusError(Status(st), "a pair failed in the C loop")
	}
	return nil
}
