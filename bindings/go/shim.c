// C helpers of the Go binding; see shim.h. Compiled by cgo with the package's CFLAGS.
#include "shim.h"

#include <string.h>

#include "_cgo_export.h"

// A string argument from Go. The empty string is a pointer to a static "" rather than NULL:
// tollgate validates non-NULL ASCII inline and sends everything else (NULL included) to its
// slower general check.
static inline tg_str go_str(const char *p, size_t n) {
  tg_str s;
  s.ptr = n == 0 ? "" : p;
  s.len = n;
  return s;
}

static inline void fill_call(tg_call *c, const char *tenant, size_t tenant_len, const char *model,
                             size_t model_len, const char *upstream, size_t upstream_len,
                             const char *key, size_t key_len, const char *route, size_t route_len,
                             int16_t priority, uint32_t prompt_kind, uint64_t prompt_tokens,
                             const char *prompt, size_t prompt_len, bool has_max_tokens,
                             uint64_t max_tokens, uint64_t deadline_ms,
                             const tg_attempt *attempt) {
  c->tenant = go_str(tenant, tenant_len);
  c->model = go_str(model, model_len);
  c->upstream = go_str(upstream, upstream_len);
  c->key = go_str(key, key_len);
  c->route = go_str(route, route_len);
  c->priority = priority;
  c->prompt_kind = prompt_kind;
  c->prompt_tokens = prompt_tokens;
  c->prompt = go_str(prompt, prompt_len);
  c->has_max_tokens = has_max_tokens;
  c->max_tokens = max_tokens;
  c->deadline_ms = deadline_ms;
  c->attempt = attempt;
}

tg_go_admit_result tg_go_admit(uintptr_t engine, const char *tenant, size_t tenant_len,
                               const char *model, size_t model_len, const char *upstream,
                               size_t upstream_len, const char *key, size_t key_len,
                               const char *route, size_t route_len, int16_t priority,
                               uint32_t prompt_kind, uint64_t prompt_tokens, const char *prompt,
                               size_t prompt_len, bool has_max_tokens, uint64_t max_tokens,
                               uint64_t deadline_ms, uintptr_t attempt) {
  tg_call c;
  fill_call(&c, tenant, tenant_len, model, model_len, upstream, upstream_len, key, key_len, route,
            route_len, priority, prompt_kind, prompt_tokens, prompt, prompt_len, has_max_tokens,
            max_tokens, deadline_ms, (const tg_attempt *)attempt);
  tg_go_admit_result r;
  memset(&r, 0, sizeof r);
  r.status = tg_engine_admit((const tg_engine *)engine, &c, &r.decision, &r.err);
  return r;
}

static void go_acquire_callback(void *user_data, tg_permit *permit, tg_error *error) {
  tgGoAcquireDone((uintptr_t)user_data, permit, error);
}

tg_go_start_result tg_go_acquire_async(uintptr_t engine, const char *tenant, size_t tenant_len,
                                       const char *model, size_t model_len,
                                       const char *upstream, size_t upstream_len,
                                       const char *key, size_t key_len, const char *route,
                                       size_t route_len, int16_t priority, uint32_t prompt_kind,
                                       uint64_t prompt_tokens, const char *prompt,
                                       size_t prompt_len, bool has_max_tokens,
                                       uint64_t max_tokens, uint64_t deadline_ms,
                                       uintptr_t attempt, uintptr_t handle, bool want_task) {
  tg_call c;
  fill_call(&c, tenant, tenant_len, model, model_len, upstream, upstream_len, key, key_len, route,
            route_len, priority, prompt_kind, prompt_tokens, prompt, prompt_len, has_max_tokens,
            max_tokens, deadline_ms, (const tg_attempt *)attempt);
  tg_go_start_result r;
  memset(&r, 0, sizeof r);
  tg_task **out_task = want_task ? &r.task : NULL;
  r.status = tg_engine_acquire_async((const tg_engine *)engine, &c, go_acquire_callback,
                                     (void *)handle, out_task, &r.err);
  return r;
}

tg_go_settle_result tg_go_settle(uintptr_t engine, uintptr_t permit, bool sent,
                                 uint16_t status, bool has_usage, uint64_t prompt_tokens,
                                 uint64_t completion_tokens, uint64_t total_tokens,
                                 uint64_t cached_prompt_tokens, uint64_t reasoning_tokens,
                                 uint64_t latency_ns, uint32_t failure, uintptr_t headers,
                                 size_t headers_len, bool content_delivered) {
  tg_outcome o;
  o.sent = sent;
  o.status = status;
  o.has_usage = has_usage;
  o.usage.prompt_tokens = prompt_tokens;
  o.usage.completion_tokens = completion_tokens;
  o.usage.total_tokens = total_tokens;
  o.usage.cached_prompt_tokens = cached_prompt_tokens;
  o.usage.reasoning_tokens = reasoning_tokens;
  o.latency_ns = latency_ns;
  o.failure = failure;
  o.headers = (const tg_header *)headers;
  o.headers_len = headers_len;
  o.content_delivered = content_delivered;
  tg_go_settle_result r;
  memset(&r, 0, sizeof r);
  r.status = tg_engine_settle((const tg_engine *)engine, (tg_permit *)permit, &o, &r.verdict,
                              &r.err);
  return r;
}

static void go_send_callback(void *user_data, tg_response *response, tg_error *error) {
  tgGoSendDone((uintptr_t)user_data, response, error);
}

static void go_stream_callback(void *user_data, const tg_event *event, tg_response *end,
                               tg_error *error) {
  tgGoStreamEvent((uintptr_t)user_data, (tg_event *)event, end, error);
}

tg_go_start_result tg_go_start(const tg_engine *engine, bool stream, const uint8_t *request,
                               size_t len, bool has_options, const char *tenant,
                               size_t tenant_len, const char *route, size_t route_len,
                               const char *upstream, size_t upstream_len, int16_t priority,
                               uint64_t deadline_ms, uint32_t cache_mode, uintptr_t handle,
                               bool want_task) {
  tg_request_options o;
  o.tenant = go_str(tenant, tenant_len);
  o.route = go_str(route, route_len);
  o.upstream = go_str(upstream, upstream_len);
  o.priority = priority;
  o.deadline_ms = deadline_ms;
  o.cache_mode = cache_mode;
  const tg_request_options *op = has_options ? &o : NULL;
  tg_go_start_result r;
  memset(&r, 0, sizeof r);
  tg_task **out_task = want_task ? &r.task : NULL;
  void *user_data = (void *)handle;
  if (stream) {
    r.status = tg_engine_stream(engine, request, len, op, go_stream_callback, user_data, out_task,
                                &r.err);
  } else {
    r.status = tg_engine_send_async(engine, request, len, op, go_send_callback, user_data,
                                    out_task, &r.err);
  }
  return r;
}

tg_go_bytes_result tg_go_metrics(const tg_engine *engine) {
  tg_go_bytes_result r;
  memset(&r, 0, sizeof r);
  r.status = tg_engine_metrics(engine, &r.bytes, &r.err);
  return r;
}

tg_go_count_result tg_go_count_tokens(const tg_engine *engine, const char *model, size_t model_len,
                                      const char *text, size_t text_len) {
  tg_go_count_result r;
  memset(&r, 0, sizeof r);
  tg_str m = {model, model_len};
  tg_str t = {text, text_len};
  r.status = tg_engine_count_tokens(engine, m, t, &r.tokens, &r.exact, &r.err);
  return r;
}

tg_go_count_result tg_go_count_request(const tg_engine *engine, const uint8_t *request, size_t len) {
  tg_go_count_result r;
  memset(&r, 0, sizeof r);
  r.status = tg_engine_count_request(engine, request, len, &r.tokens, &r.exact, &r.err);
  return r;
}

uint64_t tg_go_context_window(const tg_engine *engine, const char *model, size_t len) {
  tg_str m = {model, len};
  return tg_engine_context_window(engine, m);
}

tg_go_split_result tg_go_split_text(const tg_engine *engine, const char *model, size_t model_len,
                                    const char *text, size_t text_len, size_t max_tokens,
                                    size_t overlap) {
  tg_go_split_result r;
  memset(&r, 0, sizeof r);
  tg_str m = {model, model_len};
  tg_str t = {text, text_len};
  r.status = tg_engine_split_text(engine, m, t, max_tokens, overlap, &r.chunks, &r.err);
  return r;
}

tg_go_engine_result tg_go_engine_new(const uint8_t *policy, size_t len) {
  tg_go_engine_result r;
  memset(&r, 0, sizeof r);
  r.status = tg_engine_new(policy, len, &r.engine, &r.err);
  return r;
}

tg_go_engine_result tg_go_engine_new_from_file(const char *path, size_t len) {
  tg_go_engine_result r;
  memset(&r, 0, sizeof r);
  r.status = tg_engine_new_from_file(path, len, &r.engine, &r.err);
  return r;
}

tg_go_reload_result tg_go_reload(const tg_engine *engine, const uint8_t *policy, size_t len) {
  tg_go_reload_result r;
  memset(&r, 0, sizeof r);
  r.status = tg_engine_reload(engine, policy, len, &r.generation, &r.err);
  return r;
}

tg_go_reload_result tg_go_reload_file(const tg_engine *engine, const char *path, size_t len) {
  tg_go_reload_result r;
  memset(&r, 0, sizeof r);
  r.status = tg_engine_reload_file(engine, path, len, &r.generation, &r.err);
  return r;
}

tg_go_error_info tg_go_error_info_of(const tg_error *err) {
  tg_go_error_info i;
  memset(&i, 0, sizeof i);
  i.status = tg_error_status(err);
  i.message = tg_error_message(err);
  i.code = tg_error_code(err);
  i.budget = tg_error_budget(err);
  i.has_retry_after = tg_error_retry_after(err, &i.retry_after_ns);
  i.http_status = tg_error_http_status(err);
  i.body = tg_error_body(err);
  i.problems = tg_error_problem_count(err);
  return i;
}

tg_go_header_result tg_go_response_header(const tg_response *response, const char *name,
                                          size_t name_len) {
  tg_go_header_result r;
  memset(&r, 0, sizeof r);
  r.found = tg_response_header(response, name, name_len, &r.value);
  return r;
}

tg_go_target_result tg_go_permit_target(const tg_permit *permit) {
  tg_go_target_result r;
  memset(&r, 0, sizeof r);
  r.ok = tg_permit_target(permit, &r.target);
  return r;
}

tg_go_target_result tg_go_attempt_target(const tg_attempt *attempt) {
  tg_go_target_result r;
  memset(&r, 0, sizeof r);
  r.ok = tg_attempt_target(attempt, &r.target);
  return r;
}

tg_go_target_result tg_go_response_target(const tg_response *response) {
  tg_go_target_result r;
  memset(&r, 0, sizeof r);
  r.ok = tg_response_target(response, &r.target);
  return r;
}

tg_go_record_result tg_go_response_history(const tg_response *response, size_t index) {
  tg_go_record_result r;
  memset(&r, 0, sizeof r);
  r.ok = tg_response_history(response, index, &r.record);
  return r;
}
