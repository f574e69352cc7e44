//go:build tollgate_testkit

package tollgate

// The test upstream of a library built with the `testkit` feature (cargo build --release
// -p tollgate-capi --features testkit; release libraries leave it off): only with
// -tags tollgate_testkit, so that a library without the feature still links.

/*
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "shim.h"
#include "tollgate_testkit.h"

typedef struct tg_go_upstream_result {
  tg_status status;
  tg_test_upstream *upstream;
  tg_error *err;
} tg_go_upstream_result;

// Starts the test upstream (its threads block SIGPIPE themselves).
static tg_go_upstream_result tg_go_test_upstream_start(const uint8_t *options, size_t len) {
  tg_go_upstream_result r;
  memset(&r, 0, sizeof r);
  r.status = tg_test_upstream_start(options, len, &r.upstream, &r.err);
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

// Empty strings from the library, checked in C so that Go never holds a raw one: `empty` counts
// the empty tg_str results seen, `dangling` those of them with a non-NULL pointer.
typedef struct tg_go_empty_check {
  tg_status status;
  const char *step;  // the step that failed, when status is not OK
  int empty;
  int dangling;
  int events;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int ended;
} tg_go_empty_check;

static void empty_note(tg_go_empty_check *c, tg_str s) {
  if (s.len != 0) return;
  c->empty++;
  if (s.ptr != NULL) c->dangling++;
}

static void empty_note_target(tg_go_empty_check *c, const tg_target *t) {
  empty_note(c, t->route);
  empty_note(c, t->upstream);
  empty_note(c, t->model);
  empty_note(c, t->key);
}

static void empty_note_error(tg_go_empty_check *c, const tg_error *err) {
  empty_note(c, tg_error_code(err));
  empty_note(c, tg_error_budget(err));
  empty_note(c, tg_error_body(err));
  empty_note(c, tg_error_problem(err, 1000));
}

static void empty_note_response(tg_go_empty_check *c, const tg_response *r) {
  empty_note(c, tg_response_body(r));
  tg_target t;
  if (tg_response_target(r, &t)) empty_note_target(c, &t);
  tg_str v;
  if (tg_response_header(r, "content-type", 12, &v)) empty_note(c, v);
  size_t n = tg_response_history_len(r);
  for (size_t i = 0; i < n; i++) {
    tg_attempt_record rec;
    if (!tg_response_history(r, i, &rec)) continue;
    empty_note(c, rec.outcome);
    empty_note(c, rec.decision);
    if (rec.has_target) empty_note_target(c, &rec.target);
  }
}

static void empty_stream_cb(void *user_data, const tg_event *ev, tg_response *end,
                            tg_error *err) {
  tg_go_empty_check *c = user_data;
  pthread_mutex_lock(&c->lock);
  if (ev != NULL) {
    c->events++;
    empty_note(c, ev->event);
    empty_note(c, ev->data);
    empty_note(c, ev->id);
  } else {
    if (end != NULL) empty_note_response(c, end);
    if (err != NULL) {
      c->status = tg_error_status(err);
      empty_note_error(c, err);
    }
    tg_response_free(end);
    tg_error_free(err);
    c->ended = 1;
    pthread_cond_signal(&c->cond);
  }
  pthread_mutex_unlock(&c->lock);
}

// Looks at every kind of string result the binding reads, on an engine whose policy routes
// `model` (without keys) to a test upstream scripted to answer the first request 503, and with a
// budget: the decision of an admit, a permit's and a retry's targets, an error's fields, a sent
// response (its body, target, headers and history) and a stream's events and end.
static void tg_go_check_empty_strs(const tg_engine *engine, const char *model, size_t model_len,
                                   const uint8_t *request, size_t request_len,
                                   tg_go_empty_check *c) {
  tg_call call;
  memset(&call, 0, sizeof call);
  call.model.ptr = model;
  call.model.len = model_len;
  call.prompt_tokens = 10;
  tg_decision d;
  tg_error *err = NULL;
  c->step = "admit";
  c->status = tg_engine_admit(engine, &call, &d, NULL);
  if (c->status != TG_STATUS_OK) return;
  if (d.kind != TG_DECISION_KIND_GO) {
    tg_error_free(d.denial);
    c->status = TG_STATUS_DENIED;
    return;
  }
  empty_note(c, d.budget);
  tg_target t;
  if (tg_permit_target(d.permit, &t)) empty_note_target(c, &t);
  tg_outcome o;
  memset(&o, 0, sizeof o);
  o.sent = true;
  o.status = 503;
  tg_verdict v;
  c->step = "settle";
  c->status = tg_engine_settle(engine, d.permit, &o, &v, NULL);
  if (c->status != TG_STATUS_OK) return;
  if (v.attempt != NULL && tg_attempt_target(v.attempt, &t)) empty_note_target(c, &t);
  tg_attempt_free(v.attempt);
  if (v.give_up != NULL) empty_note_error(c, v.give_up);
  tg_error_free(v.give_up);

  // An error that is neither a denial nor a give-up: no budget, no body, no problems.
  call.prompt_kind = TG_PROMPT_KIND_REQUEST;
  call.prompt.ptr = "{";
  call.prompt.len = 1;
  c->step = "admit of a request that is not JSON";
  if (tg_engine_admit(engine, &call, &d, &err) == TG_STATUS_OK) {
    tg_permit_free(d.permit);
    c->status = TG_STATUS_INVALID_ARGUMENT;
    return;
  }
  empty_note_error(c, err);
  tg_error_free(err);
  err = NULL;

  tg_response *resp = NULL;
  c->step = "send";
  c->status = tg_engine_send(engine, request, request_len, NULL, &resp, &err);
  if (c->status != TG_STATUS_OK) {
    tg_error_free(err);
    return;
  }
  empty_note_response(c, resp);
  tg_response_free(resp);

  c->step = "stream";
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->cond, NULL);
  c->status = tg_engine_stream(engine, request, request_len, NULL, empty_stream_cb, c, NULL, &err);
  if (c->status != TG_STATUS_OK) {
    tg_error_free(err);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    return;
  }
  pthread_mutex_lock(&c->lock);
  while (!c->ended) pthread_cond_wait(&c->cond, &c->lock);
  pthread_mutex_unlock(&c->lock);
  pthread_mutex_destroy(&c->lock);
  pthread_cond_destroy(&c->cond);
}

// tg_status_name, for the test of the binding's own table.
static const char *tg_go_status_name(uint32_t n) { return tg_status_name(n); }
*/
import "C"

import (
	"runtime"
	"sync"
	"unsafe"
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

// emptyStrings runs tg_go_check_empty_strs (in C: Go never holds a raw tg_str of the library
// there) on e with model and request: how many empty string results it saw, and how many of
// them had a non-NULL pointer. Only with -tags tollgate_testkit.
func emptyStrings(e *Engine, model string, request []byte) (empty, dangling, events int, err error) {
	ptr, err := e.lock()
	if err != nil {
		return 0, 0, 0, err
	}
	c := (*C.tg_go_empty_check)(C.calloc(1, C.size_t(unsafe.Sizeof(C.tg_go_empty_check{}))))
	defer C.free(unsafe.Pointer(c))
	C.tg_go_check_empty_strs(ptr, strPtr(model), C.size_t(len(model)), bytesPtr(request),
		C.size_t(len(request)), c)
	e.unlock()
	runtime.KeepAlive(model)
	runtime.KeepAlive(request)
	if c.status != C.TG_STATUS_OK {
		return 0, 0, 0, statusError(Status(c.status), "the empty-string check failed at: "+C.GoString(c.step))
	}
	return int(c.empty), int(c.dangling), int(c.events), nil
}

// libStatusName is the library's name of status number n (tg_status_name).
func libStatusName(n uint32) string { return C.GoString(C.tg_go_status_name(C.uint32_t(n))) }
