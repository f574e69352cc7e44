// C helpers of the Go binding (shim.c). Declarations only: this header is included by the
// preambles of the Go files, and a preamble of a file with //export may hold no definitions.
//
// Empty tg_str results: the library returns them as a NULL pointer with length 0, never Rust's
// dangling non-NULL pointer (0x1) that Go's stack copier would reject ("fatal error: invalid
// pointer found on stack") once such a value sat in a Go frame; TestLibraryEmptyStringsAreNull
// checks it. So Go reads tg_str results as they come.
//
// Why helpers: cgo forbids passing Go memory that holds Go pointers to C. tg_call,
// tg_request_options and tg_outcome hold string pointers, so the Go side passes every string as
// a (pointer, length) pair of arguments (Go memory without Go pointers, borrowed for the call)
// and these helpers build the structs on the C stack. Results come back by value, so no Go
// variable escapes to the heap for an out-pointer. user_data is a runtime/cgo.Handle (an
// integer), never a Go pointer.
#ifndef TOLLGATE_GO_SHIM_H
#define TOLLGATE_GO_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tollgate.h"

// The hot path (admit, settle) takes the engine, permit and attempt handles as integers: cgo
// checks every pointer argument of an opaque C type on each call (cgocheck), and these are C
// pointers, never Go ones.
typedef struct tg_go_admit_result {
  tg_status status;
  tg_decision decision;
  tg_error *err;
} tg_go_admit_result;

typedef struct tg_go_settle_result {
  tg_status status;
  tg_verdict verdict;
  tg_error *err;
} tg_go_settle_result;

typedef struct tg_go_start_result {
  tg_status status;
  tg_task *task;
  tg_error *err;
} tg_go_start_result;

tg_go_admit_result tg_go_admit(uintptr_t engine, const char *tenant, size_t tenant_len,
                               const char *model, size_t model_len, const char *upstream,
                               size_t upstream_len, const char *key, size_t key_len,
                               const char *route, size_t route_len, int16_t priority,
                               uint32_t prompt_kind, uint64_t prompt_tokens, const char *prompt,
                               size_t prompt_len, bool has_max_tokens, uint64_t max_tokens,
                               uint64_t deadline_ms, uintptr_t attempt);

// Starts tg_engine_acquire_async with the Go trampoline as callback and `handle` (a cgo.Handle)
// as user_data. want_task false passes a NULL out_task (nothing to cancel).
tg_go_start_result tg_go_acquire_async(uintptr_t engine, const char *tenant, size_t tenant_len,
                                       const char *model, size_t model_len,
                                       const char *upstream, size_t upstream_len,
                                       const char *key, size_t key_len, const char *route,
                                       size_t route_len, int16_t priority, uint32_t prompt_kind,
                                       uint64_t prompt_tokens, const char *prompt,
                                       size_t prompt_len, bool has_max_tokens,
                                       uint64_t max_tokens, uint64_t deadline_ms,
                                       uintptr_t attempt, uintptr_t handle, bool want_task);

// headers: a tg_header array in C memory (or 0 with headers_len 0), passed as an integer so
// that cgo does not check it as a Go pointer on every call.
tg_go_settle_result tg_go_settle(uintptr_t engine, uintptr_t permit, bool sent,
                                 uint16_t status, bool has_usage, uint64_t prompt_tokens,
                                 uint64_t completion_tokens, uint64_t total_tokens,
                                 uint64_t cached_prompt_tokens, uint64_t reasoning_tokens,
                                 uint64_t latency_ns, uint32_t failure, uintptr_t headers,
                                 size_t headers_len, bool content_delivered);

// Starts tg_engine_send_async (stream false) or tg_engine_stream (stream true) with the Go
// trampoline as callback and `handle` (a cgo.Handle) as user_data. want_task false passes a
// NULL out_task (nothing to cancel).
tg_go_start_result tg_go_start(const tg_engine *engine, bool stream, const uint8_t *request,
                               size_t len, bool has_options, const char *tenant,
                               size_t tenant_len, const char *route, size_t route_len,
                               const char *upstream, size_t upstream_len, int16_t priority,
                               uint64_t deadline_ms, uint32_t cache_mode, uintptr_t handle,
                               bool want_task);

// The engine's metrics as one call: the bytes (free with tg_bytes_free) or the error.
typedef struct tg_go_bytes_result {
  tg_status status;
  tg_bytes *bytes;
  tg_error *err;
} tg_go_bytes_result;

tg_go_bytes_result tg_go_metrics(const tg_engine *engine);

// A token count as one call.
typedef struct tg_go_count_result {
  tg_status status;
  uint64_t tokens;
  bool exact;
  tg_error *err;
} tg_go_count_result;

tg_go_count_result tg_go_count_tokens(const tg_engine *engine, const char *model, size_t model_len,
                                      const char *text, size_t text_len);
tg_go_count_result tg_go_count_request(const tg_engine *engine, const uint8_t *request, size_t len);
uint64_t tg_go_context_window(const tg_engine *engine, const char *model, size_t len);

// A split text as one call: the chunks (free with tg_chunks_free) or the error.
typedef struct tg_go_split_result {
  tg_status status;
  tg_chunks *chunks;
  tg_error *err;
} tg_go_split_result;

tg_go_split_result tg_go_split_text(const tg_engine *engine, const char *model, size_t model_len,
                                    const char *text, size_t text_len, size_t max_tokens,
                                    size_t overlap);

typedef struct tg_go_engine_result {
  tg_status status;
  tg_engine *engine;
  tg_error *err;
} tg_go_engine_result;

tg_go_engine_result tg_go_engine_new(const uint8_t *policy, size_t len);
tg_go_engine_result tg_go_engine_new_from_file(const char *path, size_t len);

typedef struct tg_go_reload_result {
  tg_status status;
  uint64_t generation;
  tg_error *err;
} tg_go_reload_result;

tg_go_reload_result tg_go_reload(const tg_engine *engine, const uint8_t *policy, size_t len);
tg_go_reload_result tg_go_reload_file(const tg_engine *engine, const char *path, size_t len);

// Error details in one call (the fields the Go Error copies).
typedef struct tg_go_error_info {
  tg_status status;
  const char *message;
  tg_str code;
  tg_str budget;
  bool has_retry_after;
  uint64_t retry_after_ns;
  uint16_t http_status;
  tg_str body;
  size_t problems;
} tg_go_error_info;

tg_go_error_info tg_go_error_info_of(const tg_error *err);

// A response header lookup (value valid while the response lives).
typedef struct tg_go_header_result {
  bool found;
  tg_str value;
} tg_go_header_result;

tg_go_header_result tg_go_response_header(const tg_response *response, const char *name,
                                          size_t name_len);

// Results returned through an out-pointer, returned by value instead (a Go variable whose
// address goes to C escapes to the heap).
typedef struct tg_go_target_result {
  bool ok;
  tg_target target;
} tg_go_target_result;

tg_go_target_result tg_go_permit_target(const tg_permit *permit);
tg_go_target_result tg_go_attempt_target(const tg_attempt *attempt);
tg_go_target_result tg_go_response_target(const tg_response *response);

typedef struct tg_go_record_result {
  bool ok;
  tg_attempt_record record;
} tg_go_record_result;

tg_go_record_result tg_go_response_history(const tg_response *response, size_t index);

#endif
