/*
 * Self-checking C11 test of tollgate's C ABI (include/tollgate.h), linked against the static
 * library and run under valgrind in CI (crates/tollgate-capi/tests/c/run.sh).
 *
 * No framework: CHECK records a failure with file:line and carries on; the program prints
 * "c ffi tests: N passed, M failed" and exits 1 when anything failed.
 *
 * Every handle the tests get is freed, so that valgrind's leak check sees only the process-wide
 * statics listed in valgrind.supp. Every wait is bounded (a condition variable with a
 * deadline, or a poll with a deadline). The only network peer is the test upstream the program
 * starts on 127.0.0.1.
 */
#define _POSIX_C_SOURCE 200809L
#include "tollgate_testkit.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------
 * Checks
 * ------------------------------------------------------------------------------------------- */

static unsigned g_passed;
static unsigned g_failed;
static const char *g_section = "";

static void check_at(const char *file, int line, bool ok, const char *fmt, ...) {
  if (ok) {
    g_passed++;
    return;
  }
  g_failed++;
  fprintf(stderr, "FAIL %s:%d [%s]: ", file, line, g_section);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

#define CHECK(cond) check_at(__FILE__, __LINE__, (cond), "%s", #cond)
#define CHECKM(cond, ...) check_at(__FILE__, __LINE__, (cond), __VA_ARGS__)
#define CHECK_U64(got, want)                                                                  \
  do {                                                                                        \
    uint64_t g_ = (uint64_t)(got), w_ = (uint64_t)(want);                                     \
    check_at(__FILE__, __LINE__, g_ == w_, "%s == %s: got %" PRIu64 ", want %" PRIu64, #got,  \
             #want, g_, w_);                                                                  \
  } while (0)
#define CHECK_STATUS(got, want)                                                               \
  do {                                                                                        \
    tg_status g_ = (got), w_ = (want);                                                        \
    check_at(__FILE__, __LINE__, g_ == w_, "%s: got %u (%s), want %u (%s)", #got, g_,         \
             tg_status_name(g_), w_, tg_status_name(w_));                                     \
  } while (0)

static void section(const char *name) {
  g_section = name;
  fprintf(stderr, "-- %s\n", name);
}

/* ---------------------------------------------------------------------------------------------
 * Strings
 * ------------------------------------------------------------------------------------------- */

static tg_str S(const char *s) {
  tg_str t = {s, s ? strlen(s) : 0};
  return t;
}

static const uint8_t *U(const char *s) { return (const uint8_t *)s; }

static bool str_eq(tg_str s, const char *want) {
  size_t n = strlen(want);
  if (s.len != n) return false;
  return n == 0 || (s.ptr != NULL && memcmp(s.ptr, want, n) == 0);
}

static bool mem_has(const char *hay, size_t hay_len, const char *needle) {
  size_t n = strlen(needle);
  if (n == 0) return true;
  if (hay == NULL || hay_len < n) return false;
  for (size_t i = 0; i + n <= hay_len; i++) {
    if (memcmp(hay + i, needle, n) == 0) return true;
  }
  return false;
}

static bool str_has(tg_str s, const char *needle) { return mem_has(s.ptr, s.len, needle); }

static bool cstr_has(const char *s, const char *needle) {
  return s != NULL && mem_has(s, strlen(s), needle);
}

/* A printable copy of a tg_str for messages (truncated). */
static const char *show(tg_str s, char *buf, size_t cap) {
  size_t n = s.len < cap - 1 ? s.len : cap - 1;
  if (n > 0 && s.ptr != NULL) memcpy(buf, s.ptr, n);
  buf[n] = '\0';
  return buf;
}

#define CHECK_STR(got, want)                                                                  \
  do {                                                                                        \
    tg_str g_ = (got);                                                                        \
    char b_[160];                                                                             \
    check_at(__FILE__, __LINE__, str_eq(g_, (want)), "%s: got \"%s\", want \"%s\"", #got,     \
             show(g_, b_, sizeof b_), (want));                                                \
  } while (0)

/* ---------------------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------------------- */

/* A failing call: `got` must be `want`, *errp an error with that status whose message contains
 * `needle` (when not NULL) and, for statuses without a finer code, the status's name as code.
 * Frees the error and clears *errp. */
static void expect_err_at(const char *file, int line, tg_status got, tg_error **errp,
                          tg_status want, const char *needle) {
  check_at(file, line, got == want, "status: got %u (%s), want %u (%s)", got,
           tg_status_name(got), want, tg_status_name(want));
  tg_error *e = *errp;
  check_at(file, line, e != NULL, "an error was handed out for status %s",
           tg_status_name(want));
  if (e != NULL) {
    check_at(file, line, tg_error_status(e) == want, "tg_error_status: got %s, want %s",
             tg_status_name(tg_error_status(e)), tg_status_name(want));
    const char *msg = tg_error_message(e);
    check_at(file, line, msg != NULL && msg[0] != '\0', "error message is not empty");
    if (needle != NULL) {
      check_at(file, line, cstr_has(msg, needle), "message \"%s\" contains \"%s\"",
               msg ? msg : "(null)", needle);
    }
    if (want != TG_STATUS_DENIED && want != TG_STATUS_GAVE_UP) {
      char b[64];
      check_at(file, line, str_eq(tg_error_code(e), tg_status_name(want)),
               "error code \"%s\" is the status name \"%s\"",
               show(tg_error_code(e), b, sizeof b), tg_status_name(want));
    }
  }
  tg_error_free(e);
  *errp = NULL;
}
#define EXPECT_ERR(got, errp, want, needle)                                                   \
  expect_err_at(__FILE__, __LINE__, (got), (errp), (want), (needle))
#define EXPECT_NULL_ARG(got, errp, name)                                                      \
  expect_err_at(__FILE__, __LINE__, (got), (errp), TG_STATUS_NULL_ARGUMENT,                  \
                name " must not be NULL")

/* A successful call: TG_STATUS_OK and no error handed out. */
static void expect_ok_at(const char *file, int line, tg_status got, tg_error **errp) {
  tg_error *e = *errp;
  check_at(file, line, got == TG_STATUS_OK && e == NULL, "expected ok, got %u (%s): %s", got,
           tg_status_name(got), e ? tg_error_message(e) : "(no error)");
  tg_error_free(e);
  *errp = NULL;
}
#define EXPECT_OK(got, errp) expect_ok_at(__FILE__, __LINE__, (got), (errp))

/* ---------------------------------------------------------------------------------------------
 * Time and waiting
 * ------------------------------------------------------------------------------------------- */

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
}

/* What the callbacks of one call saw. Filled on tollgate's worker threads under `mu`; read by
 * the main thread under `mu`. */
typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int finals;             /* final callbacks (send: every call; stream: event == NULL) */
  int events;             /* stream events */
  int done_events;        /* events with done == true */
  int events_after_final; /* must stay 0 */
  int bad_args;           /* callback argument combinations the header rules out */
  bool last_done;         /* the last event seen was [DONE] */
  size_t first_data_len;
  tg_response *resp;
  tg_error *err;
  /* For the wrong-thread test: blocking functions tried inside the callback. */
  bool try_blocking;
  const tg_engine *engine;
  const tg_cache_wait *wait;
  tg_status inner_send, inner_acquire, inner_join;
  bool inner_send_msg, inner_acquire_msg, inner_join_msg;
} waiter;

static void waiter_init(waiter *w) {
  memset(w, 0, sizeof *w);
  pthread_mutex_init(&w->mu, NULL);
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cv, &a);
  pthread_condattr_destroy(&a);
  w->inner_send = w->inner_acquire = w->inner_join = 0xFFFFFFFFu;
}

/* Frees whatever the callbacks handed over and the synchronisation objects. */
static void waiter_destroy(waiter *w) {
  tg_response_free(w->resp);
  tg_error_free(w->err);
  w->resp = NULL;
  w->err = NULL;
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
}

/* Waits until `n` final callbacks fired, at most `timeout_ms`. Returns whether they did. */
static bool wait_finals(waiter *w, int n, long timeout_ms) {
  struct timespec dl;
  clock_gettime(CLOCK_MONOTONIC, &dl);
  dl.tv_sec += timeout_ms / 1000;
  dl.tv_nsec += (timeout_ms % 1000) * 1000000L;
  if (dl.tv_nsec >= 1000000000L) {
    dl.tv_sec += 1;
    dl.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&w->mu);
  while (w->finals < n) {
    if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) == ETIMEDOUT) break;
  }
  bool ok = w->finals >= n;
  pthread_mutex_unlock(&w->mu);
  return ok;
}

static int finals_of(waiter *w) {
  pthread_mutex_lock(&w->mu);
  int n = w->finals;
  pthread_mutex_unlock(&w->mu);
  return n;
}

/* Keeps the first response / error a final callback handed over; frees any later one (a later
 * one is a bug that `finals` reports). */
static void keep_final(waiter *w, tg_response *r, tg_error *e) {
  if ((r == NULL) == (e == NULL)) w->bad_args++;
  if (w->resp == NULL && w->err == NULL) {
    w->resp = r;
    w->err = e;
  } else {
    tg_response_free(r);
    tg_error_free(e);
  }
}

static const char REQ[] =
    "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}],"
    "\"max_tokens\":8}";

static void try_blocking_inside(waiter *w) {
  tg_response *r = NULL;
  tg_error *e = NULL;
  w->inner_send = tg_engine_send(w->engine, U(REQ), strlen(REQ), NULL, &r, &e);
  w->inner_send_msg = e != NULL && cstr_has(tg_error_message(e), "worker thread");
  tg_response_free(r);
  tg_error_free(e);
  e = NULL;

  tg_call call;
  memset(&call, 0, sizeof call);
  call.model = S("gpt-4o-mini");
  call.prompt_tokens = 1;
  tg_permit *p = NULL;
  w->inner_acquire = tg_engine_acquire(w->engine, &call, &p, &e);
  w->inner_acquire_msg = e != NULL && cstr_has(tg_error_message(e), "worker thread");
  tg_permit_free(p);
  tg_error_free(e);
  e = NULL;

  tg_cached *c = NULL;
  w->inner_join = tg_cache_wait_join(w->wait, 1, &c, &e);
  w->inner_join_msg = e != NULL && cstr_has(tg_error_message(e), "worker thread");
  tg_cached_free(c);
  tg_error_free(e);
}

static void on_send(void *user_data, struct tg_response *response, struct tg_error *error) {
  waiter *w = user_data;
  if (w->try_blocking) try_blocking_inside(w);
  pthread_mutex_lock(&w->mu);
  keep_final(w, response, error);
  w->finals++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void on_stream(void *user_data, const struct tg_event *event, struct tg_response *end,
                      struct tg_error *error) {
  waiter *w = user_data;
  pthread_mutex_lock(&w->mu);
  if (event != NULL) {
    if (end != NULL || error != NULL) w->bad_args++;
    if (w->finals > 0) w->events_after_final++;
    if (w->events == 0) w->first_data_len = event->data.len;
    w->events++;
    w->last_done = event->done;
    if (event->done) {
      w->done_events++;
      if (!str_eq(event->data, "[DONE]")) w->bad_args++;
    }
    if (event->data.len == 0 || event->data.ptr == NULL) w->bad_args++;
    /* Freeing what the callback does not own would be caught by valgrind. */
    tg_response_free(end);
    tg_error_free(error);
  } else {
    keep_final(w, end, error);
    w->finals++;
    pthread_cond_broadcast(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
}

/* For calls started with a NULL user_data (passed through untouched): the callbacks record
 * into this waiter and count how often user_data really was NULL. */
static waiter g_null_ud;
static int g_null_ud_seen; /* under g_null_ud.mu */

static void on_send_null_ud(void *user_data, struct tg_response *response,
                            struct tg_error *error) {
  pthread_mutex_lock(&g_null_ud.mu);
  if (user_data == NULL) g_null_ud_seen++;
  pthread_mutex_unlock(&g_null_ud.mu);
  on_send(&g_null_ud, response, error);
}

static void on_stream_null_ud(void *user_data, const struct tg_event *event,
                              struct tg_response *end, struct tg_error *error) {
  pthread_mutex_lock(&g_null_ud.mu);
  if (user_data == NULL) g_null_ud_seen++;
  pthread_mutex_unlock(&g_null_ud.mu);
  on_stream(&g_null_ud, event, end, error);
}

/* Polls the test upstream until it has received `n` requests, at most `timeout_ms`. */
static bool wait_requests(const tg_test_upstream *up, uint64_t n, long timeout_ms) {
  int64_t end = now_ms() + timeout_ms;
  while (tg_test_upstream_requests(up) < n) {
    if (now_ms() > end) return false;
    sleep_ms(2);
  }
  return true;
}

/* Polls tg_task_finished, at most `timeout_ms`. */
static bool wait_task_finished(const tg_task *t, long timeout_ms) {
  int64_t end = now_ms() + timeout_ms;
  while (!tg_task_finished(t)) {
    if (now_ms() > end) return false;
    sleep_ms(2);
  }
  return true;
}

/* ---------------------------------------------------------------------------------------------
 * Engines and files
 * ------------------------------------------------------------------------------------------- */

static tg_engine *engine_from(const char *policy) {
  tg_engine *e = NULL;
  tg_error *err = NULL;
  tg_status st = tg_engine_new(U(policy), strlen(policy), &e, &err);
  CHECKM(st == TG_STATUS_OK && e != NULL, "policy accepted: %s (%s)", tg_status_name(st),
         err ? tg_error_message(err) : "");
  tg_error_free(err);
  return e;
}

static tg_engine *call_engine(const tg_test_upstream *up, const char *extra) {
  char policy[4096];
  snprintf(policy, sizeof policy,
           "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"%s\"\n%s",
           tg_test_upstream_base_url(up), extra);
  return engine_from(policy);
}

/* Writes `len` bytes to a new temporary file; its path goes to `path` (PATH_MAX-sized). */
static bool temp_file(char *path, size_t cap, const char *data, size_t len) {
  const char *dir = getenv("TMPDIR");
  if (dir == NULL || dir[0] == '\0') dir = "/tmp";
  snprintf(path, cap, "%s/tollgate-ffi-test-XXXXXX", dir);
  int fd = mkstemp(path);
  if (fd < 0) return false;
  bool ok = write(fd, data, len) == (ssize_t)len;
  return close(fd) == 0 && ok;
}

/* Admits with the TOKENS prompt kind; returns the status and fills *d. */
static tg_status admit_tokens(const tg_engine *e, const char *model, uint64_t tokens,
                              tg_decision *d, tg_error **err) {
  tg_call call;
  memset(&call, 0, sizeof call);
  call.model = S(model);
  call.prompt_kind = TG_PROMPT_KIND_TOKENS;
  call.prompt_tokens = tokens;
  memset(d, 0, sizeof *d);
  return tg_engine_admit(e, &call, d, err);
}

/* Settles a permit as a sent call answered with `status` (usage 10 + 5 when 2xx). */
static tg_status settle_status(const tg_engine *e, tg_permit *p, uint16_t status, tg_verdict *v,
                               tg_error **err) {
  tg_outcome o;
  memset(&o, 0, sizeof o);
  o.sent = true;
  o.status = status;
  o.latency_ns = 1000000;
  if (status >= 200 && status < 300) {
    o.has_usage = true;
    o.usage.prompt_tokens = 10;
    o.usage.completion_tokens = 5;
    o.usage.total_tokens = 15;
  }
  memset(v, 0, sizeof *v);
  return tg_engine_settle(e, p, &o, v, err);
}

/* Frees what a verdict owns. */
static void verdict_free(tg_verdict *v) {
  tg_attempt_free(v->attempt);
  tg_error_free(v->give_up);
  v->attempt = NULL;
  v->give_up = NULL;
}

/* Admits (TOKENS) expecting GO and settles as a 200 expecting DONE. */
static void go_and_settle_at(const char *file, int line, const tg_engine *e, const char *model) {
  tg_decision d;
  tg_error *err = NULL;
  tg_status st = admit_tokens(e, model, 10, &d, &err);
  check_at(file, line, st == TG_STATUS_OK && d.kind == TG_DECISION_KIND_GO && d.permit != NULL,
           "admit gives GO (status %s, kind %u)", tg_status_name(st), d.kind);
  tg_error_free(err);
  tg_error_free(d.denial);
  if (d.permit != NULL) {
    tg_verdict v;
    err = NULL;
    st = settle_status(e, d.permit, 200, &v, &err);
    check_at(file, line, st == TG_STATUS_OK && v.kind == TG_VERDICT_KIND_DONE,
             "settle 200 gives DONE");
    tg_error_free(err);
    verdict_free(&v);
  }
}
#define GO_AND_SETTLE(e, model) go_and_settle_at(__FILE__, __LINE__, (e), (model))

/* Admits (TOKENS) expecting DENY by `budget` with `code`; frees the denial. */
static void expect_deny_at(const char *file, int line, const tg_engine *e, const char *model,
                           const char *budget, const char *code, tg_limit limit) {
  tg_decision d;
  tg_error *err = NULL;
  tg_status st = admit_tokens(e, model, 10, &d, &err);
  check_at(file, line, st == TG_STATUS_OK && err == NULL, "admit returns ok");
  check_at(file, line, d.kind == TG_DECISION_KIND_DENY, "admit gives DENY (kind %u)", d.kind);
  check_at(file, line, d.permit == NULL, "a denial holds no permit");
  char b[128];
  check_at(file, line, str_eq(d.budget, budget), "decision.budget \"%s\" == \"%s\"",
           show(d.budget, b, sizeof b), budget);
  check_at(file, line, d.limit == limit, "decision.limit %u == %u", d.limit, limit);
  check_at(file, line, d.denial != NULL, "a denial error is handed out");
  if (d.denial != NULL) {
    check_at(file, line, tg_error_status(d.denial) == TG_STATUS_DENIED, "denial status");
    check_at(file, line, str_eq(tg_error_code(d.denial), code), "denial code \"%s\" == \"%s\"",
             show(tg_error_code(d.denial), b, sizeof b), code);
    check_at(file, line, str_eq(tg_error_budget(d.denial), budget), "denial budget");
    check_at(file, line, cstr_has(tg_error_message(d.denial), budget),
             "denial message names the budget: %s", tg_error_message(d.denial));
  }
  tg_error_free(err);
  tg_error_free(d.denial);
  tg_permit_free(d.permit);
}
#define EXPECT_DENY(e, model, budget, code, limit)                                            \
  expect_deny_at(__FILE__, __LINE__, (e), (model), (budget), (code), (limit))

/* ---------------------------------------------------------------------------------------------
 * Version and status names
 * ------------------------------------------------------------------------------------------- */

static void test_version(void) {
  section("version");
  const char *v = tg_version();
  CHECK(v != NULL);
  CHECKM(v != NULL && strcmp(v, TOLLGATE_VERSION) == 0, "tg_version() \"%s\" == \"%s\"",
         v ? v : "(null)", TOLLGATE_VERSION);
  char want[64];
  snprintf(want, sizeof want, "%d.%d.%d", TOLLGATE_VERSION_MAJOR, TOLLGATE_VERSION_MINOR,
           TOLLGATE_VERSION_PATCH);
  CHECK(strcmp(TOLLGATE_VERSION, want) == 0);
  CHECK(tg_version() == v); /* static */

  static const struct {
    uint32_t status;
    const char *name;
  } names[] = {
      {TG_STATUS_OK, "ok"},
      {TG_STATUS_NULL_ARGUMENT, "null_argument"},
      {TG_STATUS_INVALID_ARGUMENT, "invalid_argument"},
      {TG_STATUS_INVALID_UTF8, "invalid_utf8"},
      {TG_STATUS_INVALID_JSON, "invalid_json"},
      {TG_STATUS_INVALID_POLICY, "invalid_policy"},
      {TG_STATUS_IO, "io"},
      {TG_STATUS_PANIC, "panic"},
      {TG_STATUS_WRONG_THREAD, "wrong_thread"},
      {TG_STATUS_CANCELLED, "cancelled"},
      {TG_STATUS_RUNTIME, "runtime"},
      {TG_STATUS_TIMEOUT, "timeout"},
      {TG_STATUS_ABANDONED, "abandoned"},
      {TG_STATUS_CACHE_REFUSED, "cache_refused"},
      {TG_STATUS_DENIED, "denied"},
      {TG_STATUS_GAVE_UP, "gave_up"},
      {TG_STATUS_DEADLINE, "deadline"},
      {TG_STATUS_INVALID_REQUEST, "invalid_request"},
      {TG_STATUS_NO_UPSTREAM, "no_upstream"},
      {TG_STATUS_AUTH, "auth"},
      {TG_STATUS_TRANSPORT, "transport"},
      {TG_STATUS_SHARED, "shared"},
      {TG_STATUS_STREAM_CUT, "stream_cut"},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    const char *n = tg_status_name(names[i].status);
    CHECKM(n != NULL && strcmp(n, names[i].name) == 0, "tg_status_name(%u) \"%s\" == \"%s\"",
           names[i].status, n ? n : "(null)", names[i].name);
  }
  static const uint32_t unknown[] = {14, 99, 109, 200, 1000, UINT32_MAX};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    const char *n = tg_status_name(unknown[i]);
    CHECKM(n != NULL && strcmp(n, "unknown") == 0, "tg_status_name(%u) is \"unknown\": %s",
           unknown[i], n ? n : "(null)");
  }
}

/* ---------------------------------------------------------------------------------------------
 * Create and reload
 * ------------------------------------------------------------------------------------------- */

static const char TWO_PROBLEMS[] = "version = 1\n"
                                   "[[budget]]\n"
                                   "name = \"keep\"\n"
                                   "requests_per_minute = 0\n"
                                   "concurency = 4\n";

static void check_two_problems_at(const char *file, int line, tg_error *err) {
  check_at(file, line, err != NULL, "a refused policy hands out an error");
  if (err == NULL) return;
  check_at(file, line, tg_error_status(err) == TG_STATUS_INVALID_POLICY, "status invalid_policy");
  size_t n = tg_error_problem_count(err);
  check_at(file, line, n >= 2, "problem count %zu >= 2", n);
  const char *msg = tg_error_message(err);
  for (size_t i = 0; i < n; i++) {
    tg_str p = tg_error_problem(err, i);
    char b[200];
    check_at(file, line, p.len > 0 && p.ptr != NULL, "problem %zu is not empty", i);
    /* The message lists every problem, one per line. */
    check_at(file, line, cstr_has(msg, show(p, b, sizeof b)), "message lists problem %zu: %s",
             i, b);
  }
  tg_str none = tg_error_problem(err, n);
  check_at(file, line, none.len == 0, "problem out of range is empty");
  check_at(file, line, tg_error_problem(err, SIZE_MAX).len == 0, "problem SIZE_MAX is empty");
  bool rpm = false, typo = false;
  for (size_t i = 0; i < n; i++) {
    rpm = rpm || str_has(tg_error_problem(err, i), "requests_per_minute");
    typo = typo || str_has(tg_error_problem(err, i), "concurency");
  }
  check_at(file, line, rpm && typo, "both problems are reported (rpm %d, typo %d)", rpm, typo);
  check_at(file, line, str_eq(tg_error_code(err), "invalid_policy"), "code invalid_policy");
  check_at(file, line, tg_error_http_status(err) == 0, "no HTTP status");
  check_at(file, line, tg_error_budget(err).len == 0, "no budget");
}
#define CHECK_TWO_PROBLEMS(err) check_two_problems_at(__FILE__, __LINE__, (err))

static void test_create(void) {
  section("create");
  tg_error *err = NULL;
  tg_engine *e = NULL;

  /* TOML text. */
  const char *toml = "version = 1\n[[budget]]\nname = \"t\"\nrequests_per_minute = 1\n";
  EXPECT_OK(tg_engine_new(U(toml), strlen(toml), &e, &err), &err);
  CHECK(e != NULL);
  CHECK_U64(tg_engine_generation(e), 1);
  GO_AND_SETTLE(e, "m");
  EXPECT_DENY(e, "m", "t", "budget_exhausted", TG_LIMIT_REQUESTS_PER_MINUTE);
  tg_engine_free(e);
  e = NULL;

  /* JSON text (detected). */
  const char *json =
      "{\"version\": 1, \"budget\": [{\"name\": \"j\", \"requests_per_minute\": 2}]}";
  EXPECT_OK(tg_engine_new(U(json), strlen(json), &e, &err), &err);
  CHECK(e != NULL);
  CHECK_U64(tg_engine_generation(e), 1);
  GO_AND_SETTLE(e, "m");
  GO_AND_SETTLE(e, "m");
  EXPECT_DENY(e, "m", "j", "budget_exhausted", TG_LIMIT_REQUESTS_PER_MINUTE);
  tg_engine_free(e);
  e = NULL;

  /* Not NUL-terminated: only `len` bytes are read (the garbage after them would be refused). */
  char buf[128];
  const char *head = "version = 1\n";
  snprintf(buf, sizeof buf, "%sthis is not toml [[[", head);
  EXPECT_OK(tg_engine_new(U(buf), strlen(head), &e, &err), &err);
  CHECK(e != NULL);
  tg_engine_free(e);
  e = NULL;

  /* A file. */
  char path[512];
  const char *ftoml = "version = 1\n[[budget]]\nname = \"f\"\nrequests_per_minute = 1\n";
  CHECK(temp_file(path, sizeof path, ftoml, strlen(ftoml)));
  EXPECT_OK(tg_engine_new_from_file(path, strlen(path), &e, &err), &err);
  CHECK(e != NULL);
  if (e != NULL) {
    CHECK_U64(tg_engine_generation(e), 1);
    GO_AND_SETTLE(e, "m");
    EXPECT_DENY(e, "m", "f", "budget_exhausted", TG_LIMIT_REQUESTS_PER_MINUTE);
  }
  tg_engine_free(e);
  e = NULL;
  unlink(path);

  /* A missing file: IO, the path in the message, *out_engine untouched. */
  static int sentinel;
  tg_engine *untouched = (tg_engine *)(void *)&sentinel;
  const char *missing = "/nonexistent/tollgate-ffi-test/policy.toml";
  EXPECT_ERR(tg_engine_new_from_file(missing, strlen(missing), &untouched, &err), &err,
             TG_STATUS_IO, missing);
  CHECK(untouched == (tg_engine *)(void *)&sentinel);

  /* A file with invalid UTF-8. */
  const char bad_utf8_policy[] = "version = 1\n# caf\xc3\x28 \xff\xfe\n";
  CHECK(temp_file(path, sizeof path, bad_utf8_policy, strlen(bad_utf8_policy)));
  EXPECT_ERR(tg_engine_new_from_file(path, strlen(path), &untouched, &err), &err,
             TG_STATUS_INVALID_UTF8, NULL);
  CHECK(untouched == (tg_engine *)(void *)&sentinel);
  unlink(path);

  /* A file with a refused policy. */
  CHECK(temp_file(path, sizeof path, TWO_PROBLEMS, strlen(TWO_PROBLEMS)));
  tg_status st = tg_engine_new_from_file(path, strlen(path), &untouched, &err);
  CHECK_STATUS(st, TG_STATUS_INVALID_POLICY);
  CHECK_TWO_PROBLEMS(err);
  tg_error_free(err);
  err = NULL;
  unlink(path);

  /* A path that is not UTF-8. */
  const char bad_path[] = "/tmp/\xff\xfe.toml";
  EXPECT_ERR(tg_engine_new_from_file(bad_path, strlen(bad_path), &untouched, &err), &err,
             TG_STATUS_INVALID_UTF8, "path");

  /* An invalid policy with two problems. */
  st = tg_engine_new(U(TWO_PROBLEMS), strlen(TWO_PROBLEMS), &untouched, &err);
  CHECK_STATUS(st, TG_STATUS_INVALID_POLICY);
  CHECK_TWO_PROBLEMS(err);
  CHECK(untouched == (tg_engine *)(void *)&sentinel);
  tg_error_free(err);
  err = NULL;

  /* The same in JSON. */
  const char *json_bad = "{\"version\": 1, \"budget\": [{\"name\": \"keep\", "
                         "\"requests_per_minute\": 0, \"concurency\": 4}]}";
  st = tg_engine_new(U(json_bad), strlen(json_bad), &untouched, &err);
  CHECK_STATUS(st, TG_STATUS_INVALID_POLICY);
  CHECK_TWO_PROBLEMS(err);
  tg_error_free(err);
  err = NULL;

  /* Invalid UTF-8 text. */
  EXPECT_ERR(tg_engine_new(U(bad_utf8_policy), strlen(bad_utf8_policy), &untouched, &err), &err,
             TG_STATUS_INVALID_UTF8, "policy");
  CHECK(untouched == (tg_engine *)(void *)&sentinel);

  /* Truncated JSON policy: refused as a policy (detected as neither valid JSON nor TOML). */
  const char *json_cut = "{\"version\": 1, \"budget\": [{\"name\": \"j\", \"reque";
  st = tg_engine_new(U(json_cut), strlen(json_cut), &untouched, &err);
  CHECK_STATUS(st, TG_STATUS_INVALID_POLICY);
  CHECK(tg_error_problem_count(err) >= 1);
  tg_error_free(err);
  err = NULL;

  /* NULL + 0 is the empty string: a policy without `version`, refused as a policy. */
  st = tg_engine_new(NULL, 0, &untouched, &err);
  CHECK_STATUS(st, TG_STATUS_INVALID_POLICY);
  CHECK(tg_error_problem_count(err) >= 1);
  tg_error_free(err);
  err = NULL;

  /* A length that cannot be a buffer. */
  EXPECT_ERR(tg_engine_new(U("x"), SIZE_MAX, &untouched, &err), &err,
             TG_STATUS_INVALID_ARGUMENT, "policy");
  CHECK(untouched == (tg_engine *)(void *)&sentinel);

  /* err may be NULL: the status still says what happened. */
  CHECK_STATUS(tg_engine_new(U(TWO_PROBLEMS), strlen(TWO_PROBLEMS), &untouched, NULL),
               TG_STATUS_INVALID_POLICY);
  CHECK_STATUS(tg_engine_new_from_file(missing, strlen(missing), &untouched, NULL),
               TG_STATUS_IO);
  CHECK(untouched == (tg_engine *)(void *)&sentinel);
  e = NULL;
  CHECK_STATUS(tg_engine_new(U(toml), strlen(toml), &e, NULL), TG_STATUS_OK);
  CHECK(e != NULL);
  tg_engine_free(e);
}

static void test_reload(void) {
  section("reload");
  tg_error *err = NULL;
  tg_engine *e =
      engine_from("version = 1\n[[budget]]\nname = \"keep\"\nrequests_per_minute = 5\n");
  if (e == NULL) return;
  CHECK_U64(tg_engine_generation(e), 1);

  /* A good reload: generation 2, the new limit from the next decision (state kept: the budget
   * "keep" keeps its name and scope). */
  const char *good = "version = 1\n[[budget]]\nname = \"keep\"\nrequests_per_minute = 2\n";
  uint64_t gen = 0;
  EXPECT_OK(tg_engine_reload(e, U(good), strlen(good), &gen, &err), &err);
  CHECK_U64(gen, 2);
  CHECK_U64(tg_engine_generation(e), 2);

  /* A refused reload: every problem, generation and *out_generation unchanged. */
  gen = 777;
  tg_status st = tg_engine_reload(e, U(TWO_PROBLEMS), strlen(TWO_PROBLEMS), &gen, &err);
  CHECK_STATUS(st, TG_STATUS_INVALID_POLICY);
  CHECK_TWO_PROBLEMS(err);
  tg_error_free(err);
  err = NULL;
  CHECK_U64(gen, 777);
  CHECK_U64(tg_engine_generation(e), 2);

  /* Invalid UTF-8 and truncated text are refused too; the policy stays. */
  const char bad[] = "version = 1\n# \xff\n";
  EXPECT_ERR(tg_engine_reload(e, U(bad), strlen(bad), &gen, &err), &err, TG_STATUS_INVALID_UTF8,
             "policy");
  st = tg_engine_reload(e, U("{\"version\": 1, \"bud"), 18, &gen, &err);
  CHECK_STATUS(st, TG_STATUS_INVALID_POLICY);
  tg_error_free(err);
  err = NULL;
  CHECK_U64(tg_engine_generation(e), 2);
  CHECK_U64(gen, 777);

  /* The running policy (requests_per_minute = 2 of "keep") still holds: 2 GO, then DENY. */
  GO_AND_SETTLE(e, "m");
  GO_AND_SETTLE(e, "m");
  EXPECT_DENY(e, "m", "keep", "budget_exhausted", TG_LIMIT_REQUESTS_PER_MINUTE);

  /* out_generation may be NULL. */
  EXPECT_OK(tg_engine_reload(e, U(good), strlen(good), NULL, &err), &err);
  CHECK_U64(tg_engine_generation(e), 3);
  /* State of "keep" is kept across the reload: still exhausted. */
  EXPECT_DENY(e, "m", "keep", "budget_exhausted", TG_LIMIT_REQUESTS_PER_MINUTE);

  /* Reload from a file (JSON, detected): a new budget applies from the next decision. */
  char path[512];
  const char *fjson =
      "{\"version\": 1, \"budget\": [{\"name\": \"fresh\", \"requests_per_minute\": 1}]}";
  CHECK(temp_file(path, sizeof path, fjson, strlen(fjson)));
  gen = 0;
  EXPECT_OK(tg_engine_reload_file(e, path, strlen(path), &gen, &err), &err);
  CHECK_U64(gen, 4);
  CHECK_U64(tg_engine_generation(e), 4);
  GO_AND_SETTLE(e, "m");
  EXPECT_DENY(e, "m", "fresh", "budget_exhausted", TG_LIMIT_REQUESTS_PER_MINUTE);
  unlink(path);

  /* Reload from a file with a refused policy, and from a missing file. */
  CHECK(temp_file(path, sizeof path, TWO_PROBLEMS, strlen(TWO_PROBLEMS)));
  gen = 777;
  st = tg_engine_reload_file(e, path, strlen(path), &gen, &err);
  CHECK_STATUS(st, TG_STATUS_INVALID_POLICY);
  CHECK_TWO_PROBLEMS(err);
  tg_error_free(err);
  err = NULL;
  unlink(path);
  const char *missing = "/nonexistent/tollgate-ffi-test/reload.toml";
  EXPECT_ERR(tg_engine_reload_file(e, missing, strlen(missing), &gen, &err), &err, TG_STATUS_IO,
             missing);
  CHECK_U64(gen, 777);
  CHECK_U64(tg_engine_generation(e), 4);
  EXPECT_DENY(e, "m", "fresh", "budget_exhausted", TG_LIMIT_REQUESTS_PER_MINUTE);

  /* err may be NULL. */
  CHECK_STATUS(tg_engine_reload(e, U(TWO_PROBLEMS), strlen(TWO_PROBLEMS), NULL, NULL),
               TG_STATUS_INVALID_POLICY);
  CHECK_STATUS(tg_engine_reload_file(e, missing, strlen(missing), NULL, NULL), TG_STATUS_IO);
  CHECK_U64(tg_engine_generation(e), 4);
  tg_engine_free(e);
}

/* ---------------------------------------------------------------------------------------------
 * Decide: admit / settle
 * ------------------------------------------------------------------------------------------- */

static void test_decide_budgets(void) {
  section("decide: budgets");
  tg_error *err = NULL;
  tg_decision d;

  /* requests_per_minute = 3, deny: exactly 3 GO then DENY. */
  tg_engine *e =
      engine_from("version = 1\n[[budget]]\nname = \"rpm3\"\nrequests_per_minute = 3\n"
                  "when_exhausted = \"deny\"\n");
  if (e == NULL) return;
  for (int i = 0; i < 3; i++) {
    EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
    CHECKM(d.kind == TG_DECISION_KIND_GO, "call %d of 3 goes (kind %u)", i + 1, d.kind);
    CHECK(d.permit != NULL && d.denial == NULL);
    CHECK(d.budget.len == 0);
    CHECK_U64(tg_permit_prompt_tokens(d.permit), 10);
    if (d.permit == NULL) continue;
    tg_verdict v;
    EXPECT_OK(settle_status(e, d.permit, 200, &v, &err), &err);
    CHECK(v.kind == TG_VERDICT_KIND_DONE);
    CHECK(v.attempt == NULL && v.give_up == NULL);
    CHECK(v.settlement.has_usage);
    CHECK_U64(v.settlement.tokens, 15);
    CHECK_U64(v.settlement.usage.total_tokens, 15);
    CHECK_U64(v.settlement.usage.prompt_tokens, 10);
    CHECK_U64(v.settlement.usage.completion_tokens, 5);
    CHECK(v.settlement.reserved_tokens >= 10);
    verdict_free(&v);
  }
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_DENY);
  CHECK(d.permit == NULL);
  CHECK_STR(d.budget, "rpm3");
  CHECK(d.limit == TG_LIMIT_REQUESTS_PER_MINUTE);
  CHECK(d.after_ns > 0);
  CHECK(d.denial != NULL);
  if (d.denial != NULL) {
    CHECK_STATUS(tg_error_status(d.denial), TG_STATUS_DENIED);
    CHECK_STR(tg_error_code(d.denial), "budget_exhausted");
    CHECK_STR(tg_error_budget(d.denial), "rpm3");
    /* decision.budget lives as long as the denial: it is the denial's own string. */
    CHECK(d.budget.ptr == tg_error_budget(d.denial).ptr);
    uint64_t ns = 0;
    CHECK(tg_error_retry_after(d.denial, &ns));
    CHECK(ns > 0 && ns <= 60ull * 1000000000ull);
    CHECK_U64(ns, d.after_ns);
    CHECK(cstr_has(tg_error_message(d.denial), "denied"));
    CHECK(tg_error_http_status(d.denial) == 0);
    CHECK(tg_error_body(d.denial).len == 0);
    CHECK(tg_error_problem_count(d.denial) == 0);
  }
  tg_error_free(d.denial);
  tg_engine_free(e);

  /* tg_permit_free refunds: the request is not counted, so the slot is free again. */
  e = engine_from("version = 1\n[[budget]]\nname = \"one\"\nrequests_per_minute = 1\n");
  if (e == NULL) return;
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  tg_permit_free(d.permit);
  GO_AND_SETTLE(e, "m"); /* the refunded room */
  EXPECT_DENY(e, "m", "one", "budget_exhausted", TG_LIMIT_REQUESTS_PER_MINUTE);
  /* A settle of a call never sent refunds too. */
  tg_engine_free(e);
  e = engine_from("version = 1\n[[budget]]\nname = \"one\"\nrequests_per_minute = 1\n");
  if (e == NULL) return;
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  if (d.permit != NULL) {
    tg_outcome not_sent;
    memset(&not_sent, 0, sizeof not_sent);
    tg_verdict v;
    EXPECT_OK(tg_engine_settle(e, d.permit, &not_sent, &v, &err), &err);
    CHECK(v.kind == TG_VERDICT_KIND_DONE);
    CHECK_U64(v.settlement.tokens, 0);
    CHECK(!v.settlement.has_usage);
    verdict_free(&v);
  }
  GO_AND_SETTLE(e, "m");
  EXPECT_DENY(e, "m", "one", "budget_exhausted", TG_LIMIT_REQUESTS_PER_MINUTE);
  tg_engine_free(e);

  /* A wait budget: WAIT with after_ns and the budget name; acquire waits and gets a permit. */
  e = engine_from("version = 1\n[[budget]]\nname = \"patient\"\nrequests_per_second = 1\n"
                  "when_exhausted = { wait_up_to = \"2s\" }\n");
  if (e == NULL) return;
  GO_AND_SETTLE(e, "m");
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  CHECKM(d.kind == TG_DECISION_KIND_WAIT, "kind %u is WAIT", d.kind);
  CHECK(d.permit == NULL && d.denial == NULL);
  CHECK(d.after_ns > 0 && d.after_ns <= 1000000000ull);
  CHECK_STR(d.budget, "patient");
  CHECK(d.limit == TG_LIMIT_REQUESTS_PER_SECOND);
  tg_str wait_budget = d.budget; /* valid until the engine is freed */
  tg_call call;
  memset(&call, 0, sizeof call);
  call.model = S("m");
  call.prompt_tokens = 10;
  tg_permit *p = NULL;
  int64_t t0 = now_ms();
  EXPECT_OK(tg_engine_acquire(e, &call, &p, &err), &err);
  int64_t waited = now_ms() - t0;
  CHECK(p != NULL);
  CHECKM(waited < 2500, "acquire waited %" PRId64 " ms, at most about 1 s", waited);
  CHECK_U64(tg_permit_prompt_tokens(p), 10);
  if (p != NULL) {
    tg_verdict v;
    EXPECT_OK(settle_status(e, p, 200, &v, &err), &err);
    CHECK(v.kind == TG_VERDICT_KIND_DONE);
    verdict_free(&v);
  }
  CHECK_STR(wait_budget, "patient");
  tg_engine_free(e);

  /* A budget that cannot wait long enough: acquire is refused with DENIED and the budget. */
  e = engine_from("version = 1\n[[budget]]\nname = \"slow\"\nrequests_per_minute = 1\n"
                  "when_exhausted = { wait_up_to = \"50ms\" }\n");
  if (e == NULL) return;
  GO_AND_SETTLE(e, "m");
  p = NULL;
  tg_status st = tg_engine_acquire(e, &call, &p, &err);
  CHECK_STATUS(st, TG_STATUS_DENIED);
  CHECK(p == NULL);
  CHECK_STR(tg_error_budget(err), "slow");
  tg_error_free(err);
  err = NULL;
  tg_engine_free(e);

  /* concurrency = 1: the second admit is denied until the first permit is freed or settled. */
  e = engine_from("version = 1\n[[budget]]\nname = \"conc\"\nconcurrency = 1\n");
  if (e == NULL) return;
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  tg_permit *first = d.permit;
  EXPECT_DENY(e, "m", "conc", "concurrency", TG_LIMIT_NONE);
  tg_permit_free(first);
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  tg_permit *second = d.permit;
  EXPECT_DENY(e, "m", "conc", "concurrency", TG_LIMIT_NONE);
  if (second != NULL) {
    tg_verdict v;
    EXPECT_OK(settle_status(e, second, 200, &v, &err), &err);
    CHECK(v.kind == TG_VERDICT_KIND_DONE);
    CHECK_U64(v.settlement.tokens, 15);
    verdict_free(&v);
  }
  GO_AND_SETTLE(e, "m");
  tg_engine_free(e);
}

static void test_decide_prompts(void) {
  section("decide: prompt kinds");
  tg_error *err = NULL;
  tg_decision d;
  tg_engine *e = engine_from("version = 1\n");
  if (e == NULL) return;
  tg_call call;

  /* TOKENS, with an explicit completion allowance. */
  memset(&call, 0, sizeof call);
  call.model = S("gpt-4o");
  call.prompt_kind = TG_PROMPT_KIND_TOKENS;
  call.prompt_tokens = 123;
  call.has_max_tokens = true;
  call.max_tokens = 7;
  EXPECT_OK(tg_engine_admit(e, &call, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  CHECK_U64(tg_permit_prompt_tokens(d.permit), 123);
  CHECK_U64(tg_permit_reserved_tokens(d.permit), 130);
  /* The priced estimate (prompt + allowance at the bundled gpt-4o price, $2.50 / $10.00 per
   * million tokens), whether or not a spend budget applies: 123 * 2.5e-6 + 7 * 10e-6. */
  CHECKM(fabs(tg_permit_estimated_cost(d.permit) - 0.0003775) < 1e-9,
         "estimated cost: got %g, want 0.0003775", tg_permit_estimated_cost(d.permit));
  tg_target t;
  CHECK(!tg_permit_target(d.permit, &t)); /* not routed */
  tg_permit_free(d.permit);

  /* TOKENS without max_tokens: the policy's default allowance (1024). */
  call.has_max_tokens = false;
  EXPECT_OK(tg_engine_admit(e, &call, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  CHECK_U64(tg_permit_reserved_tokens(d.permit), 123 + 1024);
  tg_permit_free(d.permit);

  /* TEXT, counted with gpt-4o's tokenizer (o200k_base): "hello world" is 2 tokens. */
  memset(&call, 0, sizeof call);
  call.model = S("gpt-4o");
  call.prompt_kind = TG_PROMPT_KIND_TEXT;
  call.prompt = S("hello world");
  call.has_max_tokens = true;
  call.max_tokens = 100;
  EXPECT_OK(tg_engine_admit(e, &call, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  CHECK_U64(tg_permit_prompt_tokens(d.permit), 2);
  CHECK_U64(tg_permit_reserved_tokens(d.permit), 102);
  tg_permit_free(d.permit);

  /* TEXT with gpt-4 (cl100k_base): a longer text counts more tokens. */
  call.model = S("gpt-4");
  call.prompt = S("hello world, this is a somewhat longer prompt for the other tokenizer");
  EXPECT_OK(tg_engine_admit(e, &call, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  CHECK(tg_permit_prompt_tokens(d.permit) > 2);
  tg_permit_free(d.permit);

  /* REQUEST: a chat body; max_tokens is read from it. */
  const char *body = "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":"
                     "\"hello world\"}],\"max_tokens\":50}";
  memset(&call, 0, sizeof call);
  call.model = S("gpt-4o");
  call.prompt_kind = TG_PROMPT_KIND_REQUEST;
  call.prompt = S(body);
  EXPECT_OK(tg_engine_admit(e, &call, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  uint64_t pt = tg_permit_prompt_tokens(d.permit);
  CHECKM(pt > 2 && pt < 50, "request prompt tokens %" PRIu64 " (text + message overhead)", pt);
  CHECK_U64(tg_permit_reserved_tokens(d.permit), pt + 50);
  tg_permit_free(d.permit);

  /* An unknown prompt kind. */
  call.prompt_kind = 3;
  EXPECT_ERR(tg_engine_admit(e, &call, &d, &err), &err, TG_STATUS_INVALID_ARGUMENT,
             "prompt_kind");
  call.prompt_kind = UINT32_MAX;
  EXPECT_ERR(tg_engine_admit(e, &call, &d, &err), &err, TG_STATUS_INVALID_ARGUMENT,
             "prompt_kind");

  /* REQUEST with truncated JSON / invalid UTF-8; TEXT with invalid UTF-8. */
  call.prompt_kind = TG_PROMPT_KIND_REQUEST;
  call.prompt.len = strlen(body) / 2;
  EXPECT_ERR(tg_engine_admit(e, &call, &d, &err), &err, TG_STATUS_INVALID_JSON, "call.prompt");
  const char bad[] = "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}";
  call.prompt = S(bad);
  EXPECT_ERR(tg_engine_admit(e, &call, &d, &err), &err, TG_STATUS_INVALID_UTF8, "call.prompt");
  call.prompt_kind = TG_PROMPT_KIND_TEXT;
  EXPECT_ERR(tg_engine_admit(e, &call, &d, &err), &err, TG_STATUS_INVALID_UTF8, "call.prompt");

  /* Invalid UTF-8 in a name; a NULL name with a length. */
  memset(&call, 0, sizeof call);
  call.model = S("gpt-4o");
  call.tenant = S("\xc3\x28");
  EXPECT_ERR(tg_engine_admit(e, &call, &d, &err), &err, TG_STATUS_INVALID_UTF8, "call.tenant");
  call.tenant = S("");
  call.model.ptr = NULL;
  call.model.len = 3;
  EXPECT_NULL_ARG(tg_engine_admit(e, &call, &d, &err), &err, "call.model");
  call.model.len = 0; /* NULL + 0: the empty name */
  EXPECT_OK(tg_engine_admit(e, &call, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  tg_permit_free(d.permit);

  /* A zero-initialised call is valid. */
  memset(&call, 0, sizeof call);
  EXPECT_OK(tg_engine_admit(e, &call, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  CHECK_U64(tg_permit_prompt_tokens(d.permit), 0);
  tg_permit_free(d.permit);
  tg_engine_free(e);

  /* A spend budget: the permit reserves money, the settlement charges it from the usage. */
  e = engine_from("version = 1\n[[budget]]\nname = \"money\"\nspend_per_day = 100.0\n"
                  "[prices]\n\"priced\" = { input = 1.0, output = 2.0 }\n");
  if (e == NULL) return;
  memset(&call, 0, sizeof call);
  call.model = S("priced");
  call.prompt_tokens = 1000000;
  call.has_max_tokens = true;
  call.max_tokens = 1000000;
  EXPECT_OK(tg_engine_admit(e, &call, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  double est = tg_permit_estimated_cost(d.permit);
  CHECKM(est > 2.99 && est < 3.01, "estimated cost %g == 1M x 1.0 + 1M x 2.0 per 1M", est);
  if (d.permit != NULL) {
    tg_outcome o;
    memset(&o, 0, sizeof o);
    o.sent = true;
    o.status = 200;
    o.has_usage = true;
    o.usage.prompt_tokens = 500000;
    o.usage.completion_tokens = 250000;
    o.usage.total_tokens = 750000;
    tg_verdict v;
    EXPECT_OK(tg_engine_settle(e, d.permit, &o, &v, &err), &err);
    CHECK(v.kind == TG_VERDICT_KIND_DONE);
    CHECK(v.settlement.has_cost);
    CHECKM(v.settlement.cost_input > 0.49 && v.settlement.cost_input < 0.51, "input cost %g",
           v.settlement.cost_input);
    CHECKM(v.settlement.cost_output > 0.49 && v.settlement.cost_output < 0.51, "output cost %g",
           v.settlement.cost_output);
    CHECKM(v.settlement.spend > 0.99 && v.settlement.spend < 1.01, "spend %g",
           v.settlement.spend);
    CHECK_U64(v.settlement.tokens, 750000);
    verdict_free(&v);
  }
  tg_engine_free(e);
}

static void test_decide_retry(void) {
  section("decide: settle and retry");
  tg_error *err = NULL;
  tg_decision d;
  tg_verdict v;
  tg_engine *e =
      engine_from("version = 1\n[retry]\nmax_attempts = 2\n"
                  "backoff = { base = \"10ms\", max = \"20ms\", jitter = \"none\" }\n"
                  /* Room for every retry below (retries stop at half the bucket). */
                  "budget = { ratio = 0.1, max_tokens = 100 }\n");
  if (e == NULL) return;

  /* 503 -> RETRY with the attempt state (number 2); the retry goes; 503 again -> GIVE_UP. */
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  EXPECT_OK(settle_status(e, d.permit, 503, &v, &err), &err);
  CHECKM(v.kind == TG_VERDICT_KIND_RETRY, "503 gives RETRY (kind %u)", v.kind);
  CHECK(v.attempt != NULL && v.give_up == NULL);
  CHECK(v.retry_after_ns > 0 && v.retry_after_ns <= 20000000ull);
  CHECK_U64(tg_attempt_number(v.attempt), 2);
  tg_target t;
  CHECK(!tg_attempt_target(v.attempt, &t)); /* not routed: no target chosen */
  CHECK_U64(v.settlement.tokens, 0);        /* a failed call is not charged */
  tg_attempt *attempt = v.attempt;

  tg_call call;
  memset(&call, 0, sizeof call);
  call.model = S("m");
  call.prompt_tokens = 10;
  call.attempt = attempt;
  memset(&d, 0, sizeof d);
  EXPECT_OK(tg_engine_admit(e, &call, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  EXPECT_OK(settle_status(e, d.permit, 503, &v, &err), &err);
  CHECKM(v.kind == TG_VERDICT_KIND_GIVE_UP, "second 503 gives GIVE_UP (kind %u)", v.kind);
  CHECK(v.attempt == NULL && v.give_up != NULL);
  if (v.give_up != NULL) {
    CHECK_STATUS(tg_error_status(v.give_up), TG_STATUS_GAVE_UP);
    CHECK_STR(tg_error_code(v.give_up), "attempts_exhausted");
    CHECK(cstr_has(tg_error_message(v.give_up), "gave up"));
    CHECK(cstr_has(tg_error_message(v.give_up), "503"));
    /* tg_error_http_status: "For TG_STATUS_GAVE_UP: the HTTP status of the last answer". */
    CHECKM(tg_error_http_status(v.give_up) == 503,
           "give_up error from settle reports the last HTTP status: got %u, want 503",
           tg_error_http_status(v.give_up));
  }
  verdict_free(&v);
  tg_attempt_free(attempt);

  /* 400 -> GIVE_UP at once (not retryable). */
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  EXPECT_OK(settle_status(e, d.permit, 400, &v, &err), &err);
  CHECK(v.kind == TG_VERDICT_KIND_GIVE_UP);
  CHECK(v.give_up != NULL && v.attempt == NULL);
  CHECK_STATUS(tg_error_status(v.give_up), TG_STATUS_GAVE_UP);
  CHECK_STR(tg_error_code(v.give_up), "not_retryable");
  CHECKM(tg_error_http_status(v.give_up) == 400,
         "give_up error from settle reports the last HTTP status: got %u, want 400",
         tg_error_http_status(v.give_up));
  verdict_free(&v);

  /* A transport failure (connection refused, no response) -> RETRY. */
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  tg_outcome o;
  memset(&o, 0, sizeof o);
  o.sent = true;
  o.failure = TG_FAILURE_CONNECT_REFUSED;
  EXPECT_OK(tg_engine_settle(e, d.permit, &o, &v, &err), &err);
  CHECK(v.kind == TG_VERDICT_KIND_RETRY);
  CHECK_U64(tg_attempt_number(v.attempt), 2);
  verdict_free(&v);

  /* Content already delivered (a stream): never retried. */
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  memset(&o, 0, sizeof o);
  o.sent = true;
  o.status = 200;
  o.failure = TG_FAILURE_CUT_STREAM;
  o.content_delivered = true;
  EXPECT_OK(tg_engine_settle(e, d.permit, &o, &v, &err), &err);
  CHECK(v.kind == TG_VERDICT_KIND_GIVE_UP);
  CHECK(v.give_up != NULL);
  verdict_free(&v);

  /* Headers: Retry-After (seconds) and retry-after-ms decide the delay. */
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  tg_header h[2];
  h[0].name = S("Content-Type");
  h[0].value = S("application/json");
  h[1].name = S("Retry-After");
  h[1].value = S("7");
  memset(&o, 0, sizeof o);
  o.sent = true;
  o.status = 429;
  o.headers = h;
  o.headers_len = 2;
  EXPECT_OK(tg_engine_settle(e, d.permit, &o, &v, &err), &err);
  CHECK(v.kind == TG_VERDICT_KIND_RETRY);
  CHECK_U64(v.retry_after_ns, 7000000000ull);
  verdict_free(&v);

  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  h[1].name = S("retry-after-ms");
  h[1].value = S("1500");
  EXPECT_OK(tg_engine_settle(e, d.permit, &o, &v, &err), &err);
  CHECK(v.kind == TG_VERDICT_KIND_RETRY);
  CHECK_U64(v.retry_after_ns, 1500000000ull);
  verdict_free(&v);

  /* A server delay above max_retry_after (default 60 s) gives up rather than wait. */
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  h[1].name = S("retry-after");
  h[1].value = S("3600");
  EXPECT_OK(tg_engine_settle(e, d.permit, &o, &v, &err), &err);
  CHECK(v.kind == TG_VERDICT_KIND_GIVE_UP);
  CHECK(v.give_up != NULL);
  verdict_free(&v);

  /* Header values are raw bytes (any), header names must be UTF-8. */
  EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
  h[1].name = S("x-anything");
  h[1].value = S("\xff\xfe");
  o.status = 200;
  EXPECT_OK(tg_engine_settle(e, d.permit, &o, &v, &err), &err);
  CHECK(v.kind == TG_VERDICT_KIND_DONE);
  verdict_free(&v);
  tg_engine_free(e);

  /* Settle errors consume the permit: with concurrency = 1 the slot is free again after each. */
  e = engine_from("version = 1\n[[budget]]\nname = \"conc\"\nconcurrency = 1\n");
  if (e == NULL) return;
  struct {
    const char *what;
    tg_status want;
    const char *needle;
  } cases[] = {
      {"bad header name", TG_STATUS_INVALID_UTF8, "header name"},
      {"headers NULL with a count", TG_STATUS_NULL_ARGUMENT, "headers must not be NULL"},
      {"unknown failure", TG_STATUS_INVALID_ARGUMENT, "failure"},
      {"NULL outcome", TG_STATUS_NULL_ARGUMENT, "outcome must not be NULL"},
      {"NULL out_verdict", TG_STATUS_NULL_ARGUMENT, "out_verdict must not be NULL"},
      {"NULL engine", TG_STATUS_NULL_ARGUMENT, "engine must not be NULL"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    EXPECT_OK(admit_tokens(e, "m", 10, &d, &err), &err);
    CHECKM(d.kind == TG_DECISION_KIND_GO, "%s: the slot is free (kind %u)", cases[i].what,
           d.kind);
    if (d.permit == NULL) continue;
    tg_header bad_h = {S("\xc3\x28"), S("v")};
    memset(&o, 0, sizeof o);
    o.sent = true;
    o.status = 200;
    const tg_outcome *op = &o;
    tg_verdict *vp = &v;
    const tg_engine *ep = e;
    switch (i) {
    case 0:
      o.headers = &bad_h;
      o.headers_len = 1;
      break;
    case 1:
      o.headers = NULL;
      o.headers_len = 1;
      break;
    case 2:
      o.failure = 12;
      break;
    case 3:
      op = NULL;
      break;
    case 4:
      vp = NULL;
      break;
    default:
      ep = NULL;
      break;
    }
    memset(&v, 0, sizeof v);
    EXPECT_ERR(tg_engine_settle(ep, d.permit, op, vp, &err), &err, cases[i].want,
               cases[i].needle);
    CHECKM(v.attempt == NULL && v.give_up == NULL, "%s: no verdict written", cases[i].what);
  }
  /* The last permit was consumed too. */
  GO_AND_SETTLE(e, "m");
  tg_engine_free(e);
}

/* ---------------------------------------------------------------------------------------------
 * Cache (host's own HTTP client)
 * ------------------------------------------------------------------------------------------- */

static const char CREQ[] = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\","
                           "\"content\":\"cache me\"}],\"temperature\":0}";

static tg_cache_kind lookup(const tg_engine *e, const char *req, uint32_t mode,
                            tg_cache_result *r) {
  tg_error *err = NULL;
  memset(r, 0, sizeof *r);
  r->kind = 0xFFFFFFFFu;
  tg_status st = tg_engine_cache_lookup(e, U(req), strlen(req), mode, r, &err);
  CHECKM(st == TG_STATUS_OK && err == NULL, "lookup ok: %s %s", tg_status_name(st),
         err ? tg_error_message(err) : "");
  tg_error_free(err);
  return r->kind;
}

static void test_cache(void) {
  section("cache");
  tg_error *err = NULL;
  tg_cache_result r;
  tg_engine *e = engine_from("version = 1\n[cache]\nenabled = true\nmax_bytes = \"1MiB\"\n"
                             "max_entry_bytes = 2048\n"
                             "only_when = { temperature_at_most = 0.0 }\n");
  if (e == NULL) return;

  /* MISS; an identical lookup meanwhile JOINs; store; the waiter and a new lookup get it. */
  CHECK(lookup(e, CREQ, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_MISS);
  CHECK(r.fill != NULL && r.hit == NULL && r.joined == NULL && r.reason.len == 0);
  tg_cache_fill *fill = r.fill;
  CHECK(lookup(e, CREQ, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_JOINED);
  CHECK(r.joined != NULL && r.hit == NULL && r.fill == NULL);
  tg_cache_wait *wait = r.joined;
  tg_cached *c = NULL;
  EXPECT_ERR(tg_cache_wait_join(wait, 10, &c, &err), &err, TG_STATUS_TIMEOUT, NULL);
  CHECK(c == NULL);

  const char body[] = "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"hi\"}}]}";
  tg_usage usage = {11, 4, 15, 0, 0};
  EXPECT_OK(tg_engine_cache_store(e, fill, 200, U(body), strlen(body), &usage, &err), &err);
  EXPECT_OK(tg_cache_wait_join(wait, 5000, &c, &err), &err);
  CHECK(c != NULL);
  CHECK_U64(tg_cached_status(c), 200);
  CHECK_STR(tg_cached_body(c), body);
  tg_cached_free(c);
  c = NULL;
  /* Joining again after the answer came: the same answer. */
  EXPECT_OK(tg_cache_wait_join(wait, 1000, &c, &err), &err);
  CHECK_STR(tg_cached_body(c), body);
  tg_cached_free(c);
  tg_cache_wait_free(wait);

  CHECK(lookup(e, CREQ, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_HIT);
  CHECK(r.hit != NULL && r.fill == NULL && r.joined == NULL);
  CHECK_U64(tg_cached_status(r.hit), 200);
  tg_str got = tg_cached_body(r.hit);
  CHECK(got.len == strlen(body) && memcmp(got.ptr, body, got.len) == 0);
  tg_usage u;
  memset(&u, 0, sizeof u);
  CHECK(tg_cached_usage(r.hit, &u));
  CHECK_U64(u.prompt_tokens, 11);
  CHECK_U64(u.completion_tokens, 4);
  CHECK_U64(u.total_tokens, 15);
  CHECK(!tg_cached_usage(r.hit, NULL));
  tg_cached_free(r.hit);

  /* The cache key ignores key order and formatting. */
  const char *reordered = "{ \"temperature\": 0.0, \"messages\": [{\"content\": \"cache me\", "
                          "\"role\": \"user\"}], \"model\": \"gpt-4o-mini\" }";
  CHECK(lookup(e, reordered, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_HIT);
  tg_cached_free(r.hit);

  /* Temperature 1 (and absent: the API default 1.0) is not cacheable. */
  const char *hot = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":"
                    "\"x\"}],\"temperature\":1}";
  CHECK(lookup(e, hot, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_NOT_CACHEABLE);
  CHECK_STR(r.reason, "temperature");
  CHECK(r.hit == NULL && r.fill == NULL && r.joined == NULL);
  CHECK(lookup(e, REQ, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_NOT_CACHEABLE);
  CHECK_STR(r.reason, "temperature");
  /* BYPASS: not cacheable; FORCE: cached despite the temperature (MISS, then given up). */
  CHECK(lookup(e, CREQ, TG_CACHE_MODE_BYPASS, &r) == TG_CACHE_KIND_NOT_CACHEABLE);
  CHECK_STR(r.reason, "bypassed");
  CHECK(lookup(e, hot, TG_CACHE_MODE_FORCE, &r) == TG_CACHE_KIND_MISS);
  tg_cache_fill_free(r.fill);
  /* The fill was given up: the next lookup leads again. */
  CHECK(lookup(e, hot, TG_CACHE_MODE_FORCE, &r) == TG_CACHE_KIND_MISS);
  tg_cache_fill_free(r.fill);

  /* cache_fail: the waiter gets SHARED with the message; nothing is stored. */
  const char *r2 = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":"
                   "\"two\"}],\"temperature\":0}";
  CHECK(lookup(e, r2, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_MISS);
  fill = r.fill;
  CHECK(lookup(e, r2, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_JOINED);
  wait = r.joined;
  const char *why = "upstream broke: 503";
  EXPECT_OK(tg_engine_cache_fail(e, fill, why, strlen(why), &err), &err);
  c = NULL;
  EXPECT_ERR(tg_cache_wait_join(wait, 5000, &c, &err), &err, TG_STATUS_SHARED, why);
  CHECK(c == NULL);
  tg_cache_wait_free(wait);
  CHECK(lookup(e, r2, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_MISS);
  fill = r.fill;

  /* A fill given up without an answer: the waiter is told ABANDONED. */
  CHECK(lookup(e, r2, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_JOINED);
  wait = r.joined;
  tg_cache_fill_free(fill);
  EXPECT_ERR(tg_cache_wait_join(wait, 5000, &c, &err), &err, TG_STATUS_ABANDONED, NULL);
  tg_cache_wait_free(wait);

  /* A non-2xx answer is handed over but not stored. */
  CHECK(lookup(e, r2, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_MISS);
  fill = r.fill;
  CHECK(lookup(e, r2, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_JOINED);
  wait = r.joined;
  const char *oops = "{\"error\":{\"message\":\"overloaded\"}}";
  EXPECT_OK(tg_engine_cache_store(e, fill, 503, U(oops), strlen(oops), NULL, &err), &err);
  c = NULL;
  tg_status st = tg_cache_wait_join(wait, 5000, &c, &err);
  if (st == TG_STATUS_OK) {
    CHECK_U64(tg_cached_status(c), 503);
    CHECK(!tg_cached_usage(c, &u)); /* stored without usage */
  }
  tg_cached_free(c);
  tg_error_free(err);
  err = NULL;
  tg_cache_wait_free(wait);
  CHECK(lookup(e, r2, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_MISS);
  fill = r.fill;

  /* Larger than max_entry_bytes: CACHE_REFUSED, not stored. */
  char *big = malloc(4096);
  CHECK(big != NULL);
  if (big != NULL) {
    memset(big, ' ', 4096);
    big[0] = '{';
    big[4095] = '}';
    EXPECT_ERR(tg_engine_cache_store(e, fill, 200, U(big), 4096, NULL, &err), &err,
               TG_STATUS_CACHE_REFUSED, NULL);
    free(big);
  } else {
    tg_cache_fill_free(fill);
  }
  CHECK(lookup(e, r2, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_MISS);
  fill = r.fill;

  /* NULL fill: an error (nothing to store into). */
  EXPECT_NULL_ARG(tg_engine_cache_store(e, NULL, 200, U(body), strlen(body), NULL, &err), &err,
                  "fill");
  EXPECT_NULL_ARG(tg_engine_cache_fail(e, NULL, why, strlen(why), &err), &err, "fill");
  /* Fail with a message that is not UTF-8: an error, and the fill is consumed. */
  CHECK(lookup(e, r2, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_JOINED);
  wait = r.joined;
  EXPECT_ERR(tg_engine_cache_fail(e, fill, "\xff", 1, &err), &err, TG_STATUS_INVALID_UTF8,
             "message");
  /* The consumed fill was dropped unfinished: the waiter hears ABANDONED. */
  EXPECT_ERR(tg_cache_wait_join(wait, 5000, &c, &err), &err, TG_STATUS_ABANDONED, NULL);
  tg_cache_wait_free(wait);

  /* Bad input to lookup. */
  EXPECT_ERR(tg_engine_cache_lookup(e, U(CREQ), strlen(CREQ) - 5, 0, &r, &err), &err,
             TG_STATUS_INVALID_JSON, "request");
  const char bad[] = "{\"model\":\"\xff\"}";
  EXPECT_ERR(tg_engine_cache_lookup(e, U(bad), strlen(bad), 0, &r, &err), &err,
             TG_STATUS_INVALID_UTF8, "request");
  EXPECT_ERR(tg_engine_cache_lookup(e, U(CREQ), strlen(CREQ), 3, &r, &err), &err,
             TG_STATUS_INVALID_ARGUMENT, "cache mode");
  EXPECT_ERR(tg_engine_cache_lookup(e, NULL, 0, 0, &r, &err), &err, TG_STATUS_INVALID_JSON,
             NULL);
  tg_engine_free(e);

  /* Cache disabled (the default). */
  e = engine_from("version = 1\n");
  if (e == NULL) return;
  CHECK(lookup(e, CREQ, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_NOT_CACHEABLE);
  CHECK_STR(r.reason, "disabled");
  tg_engine_free(e);
}

/* ---------------------------------------------------------------------------------------------
 * Call API against the test upstream
 * ------------------------------------------------------------------------------------------- */

static const char RETRY_POLICY[] =
    "[retry]\nmax_attempts = 3\n"
    "backoff = { base = \"10ms\", max = \"20ms\", jitter = \"none\" }\n"
    "retry_on = [408, 429, \"5xx\", \"connect\", \"timeout\", \"cut_stream\"]\n";

static tg_status script(const tg_test_upstream *up, const char *json) {
  tg_error *err = NULL;
  tg_status st = tg_test_upstream_script(up, U(json), strlen(json), &err);
  CHECKM(st == TG_STATUS_OK, "script %s accepted: %s", json, err ? tg_error_message(err) : "");
  tg_error_free(err);
  return st;
}


/* The cache's scope: by tenant unless the policy shares it. */
static tg_cache_kind lookup_for(const tg_engine *e, const char *tenant, tg_cache_result *r) {
  tg_error *err = NULL;
  memset(r, 0, sizeof *r);
  tg_status st = tg_engine_cache_lookup_for(e, S(tenant), U(CREQ), strlen(CREQ), 0, r, &err);
  CHECKM(st == TG_STATUS_OK && err == NULL, "lookup_for ok: %s %s", tg_status_name(st),
         err ? tg_error_message(err) : "");
  tg_error_free(err);
  return r->kind;
}

static void test_cache_scope(void) {
  section("cache scope");
  tg_error *err = NULL;
  tg_cache_result r;
  const char body[] = "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"acme's\"}}]}";
  for (int shared = 0; shared < 2; shared++) {
    tg_engine *e = engine_from(shared ? "version = 1\n[cache]\nenabled = true\nscope = \"shared\"\n"
                                      : "version = 1\n[cache]\nenabled = true\n");
    if (e == NULL) return;
    /* acme misses and leads; globex neither joins acme's call in flight nor (by default) sees
       its entry; the tenant "" is one more tenant. */
    CHECK(lookup_for(e, "acme", &r) == TG_CACHE_KIND_MISS);
    tg_cache_fill *fill = r.fill;
    tg_cache_kind other = lookup_for(e, "globex", &r);
    CHECK(other == (shared ? TG_CACHE_KIND_JOINED : TG_CACHE_KIND_MISS));
    if (other == TG_CACHE_KIND_JOINED) tg_cache_wait_free(r.joined);
    if (other == TG_CACHE_KIND_MISS) tg_cache_fill_free(r.fill);
    EXPECT_OK(tg_engine_cache_store(e, fill, 200, U(body), strlen(body), NULL, &err), &err);
    CHECK(lookup_for(e, "acme", &r) == TG_CACHE_KIND_HIT);
    CHECK_STR(tg_cached_body(r.hit), body);
    tg_cached_free(r.hit);
    other = lookup_for(e, "globex", &r);
    CHECK(other == (shared ? TG_CACHE_KIND_HIT : TG_CACHE_KIND_MISS));
    if (other == TG_CACHE_KIND_HIT) tg_cached_free(r.hit);
    if (other == TG_CACHE_KIND_MISS) tg_cache_fill_free(r.fill);
    /* tg_engine_cache_lookup is the tenant "". */
    other = lookup(e, CREQ, TG_CACHE_MODE_DEFAULT, &r);
    CHECK(other == (shared ? TG_CACHE_KIND_HIT : TG_CACHE_KIND_MISS));
    if (other == TG_CACHE_KIND_HIT) tg_cached_free(r.hit);
    if (other == TG_CACHE_KIND_MISS) tg_cache_fill_free(r.fill);
    tg_engine_free(e);
  }
}

/* A failing call whose error has a finer code than its status's name. */
static void expect_code_at(const char *file, int line, tg_status got, tg_error **errp,
                           tg_status want, const char *code) {
  check_at(file, line, got == want, "status: got %u (%s), want %u (%s)", got,
           tg_status_name(got), want, tg_status_name(want));
  tg_error *e = *errp;
  char b[64];
  check_at(file, line, e != NULL && str_eq(tg_error_code(e), code), "error code \"%s\", want \"%s\"",
           e ? show(tg_error_code(e), b, sizeof b) : "(no error)", code);
  check_at(file, line, e != NULL && tg_error_message(e)[0] != '\0', "a message");
  tg_error_free(e);
  *errp = NULL;
}
#define EXPECT_CODE(got, errp, want, code) expect_code_at(__FILE__, __LINE__, (got), (errp), (want), (code))

static void test_tokens(tg_test_upstream *up) {
  section("tokens: count, count a request, split");
  tg_error *err = NULL;
  tg_engine *e = call_engine(
      up, "[models]\nmy-model = { encoding = \"cl100k_base\", context_window = 4096 }\n");
  if (e == NULL) return;
  uint64_t n = 0;
  bool exact = false;
  EXPECT_OK(tg_engine_count_tokens(e, S("gpt-4o"), S("hello world"), &n, &exact, &err), &err);
  CHECK_U64(n, 2);
  CHECK(exact);
  EXPECT_OK(tg_engine_count_tokens(e, S("qwen-max"), S("hello world"), &n, &exact, &err), &err);
  CHECK(n >= 2 && !exact); /* no vocabulary: an estimate, and it says so */
  EXPECT_OK(tg_engine_count_tokens(e, S("my-model"), S("hello world"), &n, NULL, &err), &err);
  CHECK_U64(n, 2); /* the policy's [models] */
  CHECK_U64(tg_engine_context_window(e, S("my-model")), 4096);
  CHECK_U64(tg_engine_context_window(e, S("gpt-4o")), 128000);
  CHECK_U64(tg_engine_context_window(e, S("nobody-knows")), 0);
  CHECK_U64(tg_engine_context_window(NULL, S("gpt-4o")), 0);

  /* The prompt count is the one the upstream bills. */
  tg_response *r = NULL;
  EXPECT_OK(tg_engine_count_request(e, U(REQ), strlen(REQ), &n, &exact, &err), &err);
  EXPECT_OK(tg_engine_send(e, U(REQ), strlen(REQ), NULL, &r, &err), &err);
  tg_usage u;
  memset(&u, 0, sizeof u);
  CHECK(r != NULL && tg_response_usage(r, &u));
  CHECK_U64(n, u.prompt_tokens);
  CHECK(exact);
  tg_response_free(r);

  /* Split: byte offsets, each chunk within the limit and counted on its own text, the text
     back byte for byte; overlap repeats the end of the previous chunk. */
  char text[6000];
  size_t len = 0;
  const char *para[] = {"Rate limits protect the upstream. A client that ignores them meets 429s. ",
                        "\xe4\xbb\xa4\xe7\x89\x8c\xe6\xa1\xb6\xe7\xae\x97\xe6\xb3\x95\xe3\x80\x82 ",
                        "GCRA keeps one timestamp per key.\n\n"};
  for (int i = 0; len + 120 < sizeof text; i++) {
    size_t k = strlen(para[i % 3]);
    memcpy(text + len, para[i % 3], k);
    len += k;
  }
  tg_str t = {text, len};
  for (int with_overlap = 0; with_overlap < 2; with_overlap++) {
    tg_chunks *chunks = NULL;
    EXPECT_OK(tg_engine_split_text(e, S("gpt-4o"), t, 50, with_overlap ? 10 : 0, &chunks, &err),
              &err);
    size_t count = tg_chunks_len(chunks);
    CHECKM(count > 10, "%zu chunks", count);
    size_t next = 0;
    bool ok = true;
    for (size_t i = 0; i < count; i++) {
      const tg_chunk *c = tg_chunks_get(chunks, i);
      if (c == NULL) { ok = false; break; }
      tg_str piece = {text + c->start, c->end - c->start};
      uint64_t own = 0;
      EXPECT_OK(tg_engine_count_tokens(e, S("gpt-4o"), piece, &own, NULL, &err), &err);
      ok = ok && c->tokens == own && c->tokens <= 50 && c->exact && c->end > c->start;
      ok = ok && c->start + c->overlap == next; /* new text starts where the last one ended */
      ok = ok && (with_overlap ? (i == 0 || c->overlap > 0) : c->overlap == 0);
      next = c->end;
    }
    CHECKM(ok && next == len, "chunks cover the text in order (ended at %zu of %zu)", next, len);
    CHECK(tg_chunks_get(chunks, count) == NULL);
    tg_chunks_free(chunks);
  }

  /* Bad input: a clear error with a stable code; nothing written. */
  tg_chunks *none = NULL;
  EXPECT_CODE(tg_engine_split_text(e, S("gpt-4o"), t, 0, 0, &none, &err), &err,
              TG_STATUS_INVALID_ARGUMENT, "zero_max");
  EXPECT_CODE(tg_engine_split_text(e, S("gpt-4o"), t, 10, 10, &none, &err), &err,
              TG_STATUS_INVALID_ARGUMENT, "overlap_too_large");
  EXPECT_CODE(tg_engine_split_text(e, S("my-model"), t, 5000, 0, &none, &err), &err,
              TG_STATUS_INVALID_ARGUMENT, "exceeds_context_window");
  EXPECT_CODE(tg_engine_split_text(e, S("no-such-model"), t, 10, 0, &none, &err), &err,
              TG_STATUS_INVALID_ARGUMENT, "unknown_model");
  EXPECT_CODE(tg_engine_split_text(e, S("gpt-4o"), S(""), 10, 0, &none, &err), &err,
              TG_STATUS_INVALID_ARGUMENT, "empty");
  EXPECT_CODE(tg_engine_count_tokens(e, S("no-such-model"), S("x"), &n, NULL, &err), &err,
              TG_STATUS_INVALID_ARGUMENT, "unknown_model");
  CHECK(none == NULL);
  tg_str bad_utf8 = {"a\xff", 2};
  EXPECT_ERR(tg_engine_split_text(e, S("gpt-4o"), bad_utf8, 10, 0, &none, &err), &err,
             TG_STATUS_INVALID_UTF8, "text");
  EXPECT_ERR(tg_engine_count_tokens(e, bad_utf8, S("x"), &n, NULL, &err), &err,
             TG_STATUS_INVALID_UTF8, "model");
  EXPECT_ERR(tg_engine_count_request(e, U("{nope"), 5, &n, NULL, &err), &err,
             TG_STATUS_INVALID_JSON, "request");
  EXPECT_ERR(tg_engine_count_request(e, U("{\"messages\":[]}"), 15, &n, NULL, &err), &err,
             TG_STATUS_INVALID_REQUEST, "model");
  /* NULL pointers. */
  tg_str null_text = {NULL, 4};
  EXPECT_NULL_ARG(tg_engine_split_text(NULL, S("gpt-4o"), t, 10, 0, &none, &err), &err, "engine");
  EXPECT_NULL_ARG(tg_engine_split_text(e, S("gpt-4o"), t, 10, 0, NULL, &err), &err, "out_chunks");
  EXPECT_NULL_ARG(tg_engine_split_text(e, S("gpt-4o"), null_text, 10, 0, &none, &err), &err,
                  "text");
  EXPECT_NULL_ARG(tg_engine_count_tokens(NULL, S("gpt-4o"), S("x"), &n, NULL, &err), &err,
                  "engine");
  EXPECT_NULL_ARG(tg_engine_count_tokens(e, S("gpt-4o"), S("x"), NULL, NULL, &err), &err,
                  "out_tokens");
  EXPECT_NULL_ARG(tg_engine_count_request(e, NULL, 5, &n, NULL, &err), &err, "request");
  EXPECT_NULL_ARG(tg_engine_count_request(NULL, U(REQ), strlen(REQ), &n, NULL, &err), &err,
                  "engine");
  CHECK_U64(tg_chunks_len(NULL), 0);
  CHECK(tg_chunks_get(NULL, 0) == NULL);
  tg_chunks_free(NULL);
  tg_engine_free(e);
}

static void test_send(tg_test_upstream *up) {
  section("call: blocking send");
  tg_error *err = NULL;
  tg_response *r = NULL;
  tg_engine *e = call_engine(up, RETRY_POLICY);
  if (e == NULL) return;
  uint64_t before = tg_test_upstream_requests(up);

  EXPECT_OK(tg_engine_send(e, U(REQ), strlen(REQ), NULL, &r, &err), &err);
  CHECK(r != NULL);
  CHECK_U64(tg_test_upstream_requests(up), before + 1);
  CHECK_U64(tg_response_status(r), 200);
  tg_str body = tg_response_body(r);
  CHECK(body.len > 0 && body.ptr[0] == '{');
  CHECK(str_has(body, "\"choices\""));
  CHECK(tg_response_source(r) == TG_SOURCE_UPSTREAM);
  CHECK_U64(tg_response_attempts(r), 1);
  CHECK_U64(tg_response_history_len(r), 0);
  tg_attempt_record rec;
  CHECK(!tg_response_history(r, 0, &rec));
  tg_usage u;
  memset(&u, 0, sizeof u);
  CHECK(tg_response_usage(r, &u));
  CHECK_U64(u.completion_tokens, 8);
  CHECK(u.prompt_tokens > 0);
  CHECK_U64(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  tg_settlement s;
  memset(&s, 0, sizeof s);
  CHECK(tg_response_settlement(r, &s));
  CHECK(s.has_usage);
  CHECK_U64(s.tokens, u.total_tokens);
  tg_str hv = {NULL, 0};
  CHECK(tg_response_header(r, "Content-Type", 12, &hv));
  CHECK(str_has(hv, "application/json"));
  CHECK(tg_response_header(r, "content-type", 12, &hv));
  CHECK(!tg_response_header(r, "x-not-there", 11, &hv));
  CHECK(!tg_response_header(r, "\xff", 1, &hv));
  tg_target t;
  if (tg_response_target(r, &t)) CHECK_STR(t.upstream, "test");
  tg_response_free(r);
  r = NULL;

  /* Options: tenant and the rest. */
  tg_request_options opts;
  memset(&opts, 0, sizeof opts);
  opts.tenant = S("acme");
  opts.priority = 3;
  opts.deadline_ms = 60000;
  opts.cache_mode = TG_CACHE_MODE_BYPASS;
  EXPECT_OK(tg_engine_send(e, U(REQ), strlen(REQ), &opts, &r, &err), &err);
  CHECK_U64(tg_response_status(r), 200);
  tg_response_free(r);
  r = NULL;

  /* Bad input. */
  static int sentinel;
  tg_response *untouched = (tg_response *)(void *)&sentinel;
  EXPECT_ERR(tg_engine_send(e, U(REQ), strlen(REQ) - 3, NULL, &untouched, &err), &err,
             TG_STATUS_INVALID_JSON, "request");
  const char bad[] = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":"
                     "\"\xc3\x28\"}]}";
  EXPECT_ERR(tg_engine_send(e, U(bad), strlen(bad), NULL, &untouched, &err), &err,
             TG_STATUS_INVALID_UTF8, "request");
  EXPECT_ERR(tg_engine_send(e, NULL, 0, NULL, &untouched, &err), &err, TG_STATUS_INVALID_JSON,
             NULL);
  /* Not a chat request tollgate can send: INVALID_REQUEST ("e.g. no `messages`", says the
   * header), and nothing reaches the upstream. */
  uint64_t before_bad = tg_test_upstream_requests(up);
  const char *nomodel = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
  EXPECT_ERR(tg_engine_send(e, U(nomodel), strlen(nomodel), NULL, &untouched, &err), &err,
             TG_STATUS_INVALID_REQUEST, "model");
  EXPECT_ERR(tg_engine_send(e, U("[1, 2]"), 6, NULL, &untouched, &err), &err,
             TG_STATUS_INVALID_REQUEST, NULL);
  const char *nomsg = "{\"model\":\"gpt-4o-mini\"}";
  EXPECT_ERR(tg_engine_send(e, U(nomsg), strlen(nomsg), NULL, &untouched, &err), &err,
             TG_STATUS_INVALID_REQUEST, "messages");
  CHECK_U64(tg_test_upstream_requests(up), before_bad);
  /* A route the policy does not have. */
  tg_request_options bad_route;
  memset(&bad_route, 0, sizeof bad_route);
  bad_route.route = S("nope");
  EXPECT_ERR(tg_engine_send(e, U(REQ), strlen(REQ), &bad_route, &untouched, &err), &err,
             TG_STATUS_NO_UPSTREAM, NULL);
  opts.tenant = S("\xff");
  EXPECT_ERR(tg_engine_send(e, U(REQ), strlen(REQ), &opts, &untouched, &err), &err,
             TG_STATUS_INVALID_UTF8, "options.tenant");
  opts.tenant = S("acme");
  opts.cache_mode = 77;
  EXPECT_ERR(tg_engine_send(e, U(REQ), strlen(REQ), &opts, &untouched, &err), &err,
             TG_STATUS_INVALID_ARGUMENT, "cache mode");
  CHECK(untouched == (tg_response *)(void *)&sentinel);
  CHECK_STATUS(tg_engine_send(e, U(REQ), 5, NULL, &untouched, NULL), TG_STATUS_INVALID_JSON);

  /* A scripted 503 then a normal answer: retried, 2 attempts, 1 in the history. */
  before = tg_test_upstream_requests(up);
  script(up, "{\"actions\":[\"503\",\"normal\"]}");
  EXPECT_OK(tg_engine_send(e, U(REQ), strlen(REQ), NULL, &r, &err), &err);
  CHECK_U64(tg_response_status(r), 200);
  CHECK_U64(tg_response_attempts(r), 2);
  CHECK_U64(tg_response_history_len(r), 1);
  memset(&rec, 0, sizeof rec);
  CHECK(tg_response_history(r, 0, &rec));
  CHECK_U64(rec.number, 1);
  CHECK_STR(rec.outcome, "status_503");
  CHECK(rec.decision.len > 0);
  CHECK(!tg_response_history(r, 1, &rec));
  CHECK_U64(tg_test_upstream_requests(up), before + 2);
  tg_response_free(r);
  r = NULL;

  /* A 400: not retried, GAVE_UP with the status and the upstream's error body. */
  before = tg_test_upstream_requests(up);
  script(up, "{\"actions\":[\"status:400\"]}");
  tg_status st = tg_engine_send(e, U(REQ), strlen(REQ), NULL, &r, &err);
  CHECK_STATUS(st, TG_STATUS_GAVE_UP);
  CHECK(r == NULL);
  CHECK(err != NULL);
  if (err != NULL) {
    CHECK_STATUS(tg_error_status(err), TG_STATUS_GAVE_UP);
    CHECK_STR(tg_error_code(err), "not_retryable");
    CHECK_U64(tg_error_http_status(err), 400);
    CHECK(tg_error_body(err).len > 0);
    CHECK(str_has(tg_error_body(err), "error"));
    CHECK(tg_error_budget(err).len == 0);
  }
  tg_error_free(err);
  err = NULL;
  CHECK_U64(tg_test_upstream_requests(up), before + 1);

  /* Three 503s with max_attempts = 3: attempts exhausted. */
  before = tg_test_upstream_requests(up);
  script(up, "{\"actions\":[\"503\",\"503\",\"503\"]}");
  st = tg_engine_send(e, U(REQ), strlen(REQ), NULL, &r, &err);
  CHECK_STATUS(st, TG_STATUS_GAVE_UP);
  CHECK_STR(tg_error_code(err), "attempts_exhausted");
  CHECK_U64(tg_error_http_status(err), 503);
  tg_error_free(err);
  err = NULL;
  CHECK_U64(tg_test_upstream_requests(up), before + 3);

  /* Metrics after calls. */
  tg_bytes *m = NULL;
  EXPECT_OK(tg_engine_metrics(e, &m, &err), &err);
  CHECK(m != NULL);
  if (m != NULL) {
    CHECK(m->len > 0 && m->data != NULL);
    unsigned lines = 0, samples = 0;
    const char *p = (const char *)m->data, *end = p + m->len;
    while (p < end) {
      const char *nl = memchr(p, '\n', (size_t)(end - p));
      size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
      lines++;
      if (n > 9 && memcmp(p, "tollgate_", 9) == 0) samples++;
      p += n + 1;
    }
    CHECKM(samples > 0, "metrics have tollgate_ samples (%u of %u lines)", samples, lines);
    CHECK(mem_has((const char *)m->data, m->len, "# TYPE tollgate_"));
  }
  tg_bytes_free(m);
  tg_engine_free(e);

  /* Denial through the call API. */
  e = call_engine(up, "[[budget]]\nname = \"one-per-minute\"\nrequests_per_minute = 1\n");
  if (e == NULL) return;
  EXPECT_OK(tg_engine_send(e, U(REQ), strlen(REQ), NULL, &r, &err), &err);
  tg_response_free(r);
  r = NULL;
  before = tg_test_upstream_requests(up);
  st = tg_engine_send(e, U(REQ), strlen(REQ), NULL, &r, &err);
  CHECK_STATUS(st, TG_STATUS_DENIED);
  CHECK(r == NULL);
  if (err != NULL) {
    CHECK_STATUS(tg_error_status(err), TG_STATUS_DENIED);
    CHECK_STR(tg_error_budget(err), "one-per-minute");
    CHECK_STR(tg_error_code(err), "budget_exhausted");
    uint64_t ns = 0;
    CHECK(tg_error_retry_after(err, &ns));
    CHECK(ns > 0);
    CHECK(!tg_error_retry_after(err, NULL));
  }
  tg_error_free(err);
  err = NULL;
  CHECK_U64(tg_test_upstream_requests(up), before); /* never sent */
  tg_engine_free(e);

  /* Answers from the cache through the call API. */
  e = call_engine(up, "[cache]\nenabled = true\n");
  if (e == NULL) return;
  before = tg_test_upstream_requests(up);
  EXPECT_OK(tg_engine_send(e, U(CREQ), strlen(CREQ), NULL, &r, &err), &err);
  CHECK(tg_response_source(r) == TG_SOURCE_UPSTREAM);
  tg_response *r2 = NULL;
  EXPECT_OK(tg_engine_send(e, U(CREQ), strlen(CREQ), NULL, &r2, &err), &err);
  CHECK(tg_response_source(r2) == TG_SOURCE_CACHE);
  CHECK_U64(tg_response_attempts(r2), 0);
  CHECK(!tg_response_settlement(r2, &s));
  tg_str b1 = tg_response_body(r), b2 = tg_response_body(r2);
  CHECK(b1.len == b2.len && b1.len > 0 && memcmp(b1.ptr, b2.ptr, b1.len) == 0);
  CHECK_U64(tg_test_upstream_requests(up), before + 1);
  tg_response_free(r);
  tg_response_free(r2);
  r = NULL;
  tg_engine_free(e);

  /* No upstream in the policy. */
  e = engine_from("version = 1\n");
  if (e == NULL) return;
  EXPECT_ERR(tg_engine_send(e, U(REQ), strlen(REQ), NULL, &r, &err), &err,
             TG_STATUS_NO_UPSTREAM, NULL);
  tg_engine_free(e);
}

static void test_async(tg_test_upstream *up) {
  section("call: async send and cancel");
  tg_error *err = NULL;
  tg_engine *e = call_engine(up, RETRY_POLICY);
  if (e == NULL) return;

  /* Async send: the callback fires exactly once with the response. */
  waiter w1, w2, w3, w4, w5;
  waiter_init(&w1);
  waiter_init(&w2);
  waiter_init(&w3);
  waiter_init(&w4);
  waiter_init(&w5);
  tg_task *task = NULL;
  EXPECT_OK(tg_engine_send_async(e, U(REQ), strlen(REQ), NULL, on_send, &w1, &task, &err), &err);
  CHECK(task != NULL);
  CHECK(wait_finals(&w1, 1, 30000));
  pthread_mutex_lock(&w1.mu);
  CHECK(w1.resp != NULL && w1.err == NULL);
  CHECK_U64(tg_response_status(w1.resp), 200);
  CHECK(str_has(tg_response_body(w1.resp), "\"choices\""));
  pthread_mutex_unlock(&w1.mu);
  CHECK(wait_task_finished(task, 5000));
  tg_task_cancel(task); /* already ended: nothing happens (no second callback, checked below) */
  tg_task_free(task);
  task = NULL;

  /* Without a task handle. */
  EXPECT_OK(tg_engine_send_async(e, U(REQ), strlen(REQ), NULL, on_send, &w2, NULL, &err), &err);
  CHECK(wait_finals(&w2, 1, 30000));
  CHECK(w2.resp != NULL && w2.err == NULL);

  /* Bad input: an error at once and the callback never fires. */
  waiter never;
  waiter_init(&never);
  task = NULL;
  EXPECT_ERR(tg_engine_send_async(e, U(REQ), 10, NULL, on_send, &never, &task, &err), &err,
             TG_STATUS_INVALID_JSON, "request");
  const char bad[] = "{\"model\":\"\xff\",\"messages\":[]}";
  EXPECT_ERR(tg_engine_send_async(e, U(bad), strlen(bad), NULL, on_send, &never, &task, &err),
             &err, TG_STATUS_INVALID_UTF8, "request");
  EXPECT_ERR(tg_engine_stream(e, U(bad), strlen(bad), NULL, on_stream, &never, &task, &err),
             &err, TG_STATUS_INVALID_UTF8, "request");
  EXPECT_ERR(tg_engine_stream(e, U(REQ), 10, NULL, on_stream, &never, &task, &err), &err,
             TG_STATUS_INVALID_JSON, "request");
  CHECK(task == NULL);

  /* Cancel: a slow first byte, cancelled while the upstream holds it. */
  uint64_t before = tg_test_upstream_requests(up);
  script(up, "{\"actions\":[\"slow_first_byte:5000\"]}");
  int64_t t0 = now_ms();
  EXPECT_OK(tg_engine_send_async(e, U(REQ), strlen(REQ), NULL, on_send, &w3, &task, &err), &err);
  CHECK(wait_requests(up, before + 1, 10000)); /* the request reached the upstream */
  CHECK(!tg_task_finished(task));
  CHECK_U64(finals_of(&w3), 0);
  tg_task_cancel(task);
  CHECK(wait_finals(&w3, 1, 4000));
  int64_t took = now_ms() - t0;
  CHECKM(took < 4500, "cancel ended the call in %" PRId64 " ms, before the 5 s first byte", took);
  pthread_mutex_lock(&w3.mu);
  CHECK(w3.resp == NULL && w3.err != NULL);
  if (w3.err != NULL) CHECK_STATUS(tg_error_status(w3.err), TG_STATUS_CANCELLED);
  pthread_mutex_unlock(&w3.mu);
  CHECK(wait_task_finished(task, 5000));
  tg_task_cancel(task); /* again: nothing happens */
  tg_task_free(task);
  task = NULL;

  /* Cancelling a stream before its first event. */
  before = tg_test_upstream_requests(up);
  script(up, "{\"match\":{\"stream\":true},\"actions\":[\"slow_first_byte:5000\"]}");
  EXPECT_OK(tg_engine_stream(e, U(REQ), strlen(REQ), NULL, on_stream, &w4, &task, &err), &err);
  CHECK(wait_requests(up, before + 1, 10000));
  tg_task_cancel(task);
  CHECK(wait_finals(&w4, 1, 4000));
  pthread_mutex_lock(&w4.mu);
  CHECK(w4.err != NULL && w4.resp == NULL);
  if (w4.err != NULL) CHECK_STATUS(tg_error_status(w4.err), TG_STATUS_CANCELLED);
  CHECK_U64(w4.events, 0);
  pthread_mutex_unlock(&w4.mu);
  tg_task_free(task);
  task = NULL;

  /* Freeing a task handle does not cancel: the callback still fires with the answer. */
  EXPECT_OK(tg_engine_send_async(e, U(REQ), strlen(REQ), NULL, on_send, &w5, &task, &err), &err);
  tg_task_free(task);
  task = NULL;
  CHECK(wait_finals(&w5, 1, 30000));
  CHECK(w5.resp != NULL && w5.err == NULL);

  tg_engine_free(e);
  /* After the engine is freed no callback can come: each fired exactly once. */
  CHECK_U64(finals_of(&w1), 1);
  CHECK_U64(finals_of(&w2), 1);
  CHECK_U64(finals_of(&w3), 1);
  CHECK_U64(finals_of(&w4), 1);
  CHECK_U64(finals_of(&w5), 1);
  CHECK_U64(finals_of(&never), 0);
  CHECK(w1.bad_args + w2.bad_args + w3.bad_args + w4.bad_args + w5.bad_args == 0);
  waiter_destroy(&w1);
  waiter_destroy(&w2);
  waiter_destroy(&w3);
  waiter_destroy(&w4);
  waiter_destroy(&w5);
  waiter_destroy(&never);

  /* Freeing the engine with a call in flight: CANCELLED before tg_engine_free returns. */
  e = call_engine(up, "");
  if (e == NULL) return;
  waiter wf, ws;
  waiter_init(&wf);
  waiter_init(&ws);
  before = tg_test_upstream_requests(up);
  script(up, "{\"match\":{\"stream\":false},\"actions\":[\"slow_first_byte:5000\"]}");
  script(up, "{\"match\":{\"stream\":true},\"actions\":[\"slow_first_byte:5000\"]}");
  EXPECT_OK(tg_engine_send_async(e, U(REQ), strlen(REQ), NULL, on_send, &wf, NULL, &err), &err);
  EXPECT_OK(tg_engine_stream(e, U(REQ), strlen(REQ), NULL, on_stream, &ws, NULL, &err), &err);
  CHECK(wait_requests(up, before + 2, 10000));
  t0 = now_ms();
  tg_engine_free(e);
  took = now_ms() - t0;
  CHECKM(finals_of(&wf) == 1, "send callback fired before tg_engine_free returned (%d)",
         finals_of(&wf));
  CHECKM(finals_of(&ws) == 1, "stream callback fired before tg_engine_free returned (%d)",
         finals_of(&ws));
  CHECKM(took < 4500, "tg_engine_free took %" PRId64 " ms, did not wait for the first byte", took);
  if (wf.err != NULL) CHECK_STATUS(tg_error_status(wf.err), TG_STATUS_CANCELLED);
  if (ws.err != NULL) CHECK_STATUS(tg_error_status(ws.err), TG_STATUS_CANCELLED);
  CHECK(wf.resp == NULL && ws.resp == NULL);
  waiter_destroy(&wf);
  waiter_destroy(&ws);

  /* Freeing the engine while a stream is receiving events: the stream ends CANCELLED (not with
   * the transport error the closing runtime causes), and the process survives although this
   * program leaves SIGPIPE at its default action (tollgate's threads block it). A few rounds,
   * because which of the two the runtime stops first varies. */
  for (int round = 0; round < 4; round++) {
    e = call_engine(up, "");
    if (e == NULL) return;
    waiter wm;
    waiter_init(&wm);
    script(up, "{\"match\":{\"stream\":true},\"actions\":[\"slow_drip:40\"]}");
    EXPECT_OK(tg_engine_stream(e, U(REQ), strlen(REQ), NULL, on_stream, &wm, NULL, &err), &err);
    int events = 0;
    for (int i = 0; i < 1000 && events < 2; i++) {
      sleep_ms(10);
      pthread_mutex_lock(&wm.mu);
      events = wm.events;
      pthread_mutex_unlock(&wm.mu);
    }
    CHECKM(events >= 2, "round %d: %d events before the free", round, events);
    tg_engine_free(e);
    CHECKM(finals_of(&wm) == 1, "round %d: final callbacks %d", round, finals_of(&wm));
    if (wm.err != NULL) CHECK_STATUS(tg_error_status(wm.err), TG_STATUS_CANCELLED);
    CHECKM(wm.resp == NULL, "round %d: the stream finished before the free", round);
    waiter_destroy(&wm);
  }
}

static void test_stream(tg_test_upstream *up) {
  section("call: stream");
  tg_error *err = NULL;
  tg_engine *e = call_engine(up, RETRY_POLICY);
  if (e == NULL) return;

  /* A whole stream: events in order, [DONE] last, then one final callback with usage. */
  waiter w;
  waiter_init(&w);
  tg_task *task = NULL;
  EXPECT_OK(tg_engine_stream(e, U(REQ), strlen(REQ), NULL, on_stream, &w, &task, &err), &err);
  CHECK(wait_finals(&w, 1, 30000));
  pthread_mutex_lock(&w.mu);
  CHECKM(w.events >= 3, "%d events", w.events);
  CHECK(w.last_done);
  CHECK_U64(w.done_events, 1);
  CHECK(w.first_data_len > 0);
  CHECK(w.err == NULL && w.resp != NULL);
  if (w.resp != NULL) {
    CHECK_U64(tg_response_status(w.resp), 200);
    CHECK_U64(tg_response_body(w.resp).len, 0);
    tg_usage u;
    memset(&u, 0, sizeof u);
    CHECK(tg_response_usage(w.resp, &u));
    CHECK_U64(u.completion_tokens, 8);
    CHECK_U64(u.total_tokens, u.prompt_tokens + u.completion_tokens);
    tg_settlement s;
    CHECK(tg_response_settlement(w.resp, &s));
    CHECK_U64(s.tokens, u.total_tokens);
    CHECK_U64(tg_response_attempts(w.resp), 1);
    tg_str hv;
    CHECK(tg_response_header(w.resp, "content-type", 12, &hv));
    CHECK(str_has(hv, "text/event-stream"));
  }
  pthread_mutex_unlock(&w.mu);
  CHECK(wait_task_finished(task, 5000));
  tg_task_free(task);
  task = NULL;

  /* A cut after 3 events: content reached the caller, so no retry: STREAM_CUT. */
  waiter wc;
  waiter_init(&wc);
  uint64_t before = tg_test_upstream_requests(up);
  script(up, "{\"match\":{\"stream\":true},\"actions\":[\"cut:3\"]}");
  EXPECT_OK(tg_engine_stream(e, U(REQ), strlen(REQ), NULL, on_stream, &wc, NULL, &err), &err);
  CHECK(wait_finals(&wc, 1, 30000));
  pthread_mutex_lock(&wc.mu);
  CHECK_U64(wc.events, 3);
  CHECK(!wc.last_done);
  CHECK_U64(wc.done_events, 0);
  CHECK(wc.resp == NULL && wc.err != NULL);
  if (wc.err != NULL) CHECK_STATUS(tg_error_status(wc.err), TG_STATUS_STREAM_CUT);
  pthread_mutex_unlock(&wc.mu);
  CHECK_U64(tg_test_upstream_requests(up), before + 1); /* not retried */

  /* A cut before any event: nothing reached the caller, so it is retried (cut_stream is in
   * retry_on) and the caller sees one whole stream. */
  waiter wr;
  waiter_init(&wr);
  before = tg_test_upstream_requests(up);
  script(up, "{\"match\":{\"stream\":true},\"actions\":[\"cut:0\",\"normal\"]}");
  EXPECT_OK(tg_engine_stream(e, U(REQ), strlen(REQ), NULL, on_stream, &wr, NULL, &err), &err);
  CHECK(wait_finals(&wr, 1, 30000));
  pthread_mutex_lock(&wr.mu);
  CHECK(wr.err == NULL && wr.resp != NULL);
  CHECK(wr.last_done);
  CHECK_U64(wr.done_events, 1);
  if (wr.resp != NULL) {
    CHECK_U64(tg_response_attempts(wr.resp), 2);
    CHECK_U64(tg_response_history_len(wr.resp), 1);
  }
  if (wr.err != NULL) fprintf(stderr, "   cut:0 stream: %s\n", tg_error_message(wr.err));
  pthread_mutex_unlock(&wr.mu);
  CHECK_U64(tg_test_upstream_requests(up), before + 2);

  /* A scripted 503 before the stream starts: retried. */
  waiter w5;
  waiter_init(&w5);
  script(up, "{\"match\":{\"stream\":true},\"actions\":[\"503\"]}");
  EXPECT_OK(tg_engine_stream(e, U(REQ), strlen(REQ), NULL, on_stream, &w5, NULL, &err), &err);
  CHECK(wait_finals(&w5, 1, 30000));
  pthread_mutex_lock(&w5.mu);
  CHECK(w5.err == NULL && w5.resp != NULL);
  if (w5.resp != NULL) CHECK_U64(tg_response_attempts(w5.resp), 2);
  pthread_mutex_unlock(&w5.mu);

  tg_engine_free(e);
  CHECK_U64(finals_of(&w), 1);
  CHECK_U64(finals_of(&wc), 1);
  CHECK_U64(finals_of(&wr), 1);
  CHECK_U64(finals_of(&w5), 1);
  CHECK(w.events_after_final + wc.events_after_final + wr.events_after_final +
            w5.events_after_final ==
        0);
  CHECK(w.bad_args + wc.bad_args + wr.bad_args + w5.bad_args == 0);
  waiter_destroy(&w);
  waiter_destroy(&wc);
  waiter_destroy(&wr);
  waiter_destroy(&w5);
}

static void test_wrong_thread(tg_test_upstream *up) {
  section("call: blocking functions inside a callback");
  tg_error *err = NULL;
  tg_engine *e = call_engine(up, "[cache]\nenabled = true\n");
  if (e == NULL) return;
  tg_cache_result r;
  CHECK(lookup(e, CREQ, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_MISS);
  tg_cache_fill *fill = r.fill;
  CHECK(lookup(e, CREQ, TG_CACHE_MODE_DEFAULT, &r) == TG_CACHE_KIND_JOINED);
  tg_cache_wait *wait = r.joined;

  waiter w;
  waiter_init(&w);
  w.try_blocking = true;
  w.engine = e;
  w.wait = wait;
  EXPECT_OK(tg_engine_send_async(e, U(REQ), strlen(REQ), NULL, on_send, &w, NULL, &err), &err);
  CHECK(wait_finals(&w, 1, 30000));
  pthread_mutex_lock(&w.mu);
  CHECK_STATUS(w.inner_send, TG_STATUS_WRONG_THREAD);
  CHECK_STATUS(w.inner_acquire, TG_STATUS_WRONG_THREAD);
  CHECK_STATUS(w.inner_join, TG_STATUS_WRONG_THREAD);
  CHECK(w.inner_send_msg && w.inner_acquire_msg && w.inner_join_msg);
  CHECK(w.resp != NULL);
  pthread_mutex_unlock(&w.mu);

  tg_cache_fill_free(fill);
  tg_cache_wait_free(wait);
  tg_engine_free(e);
  CHECK_U64(finals_of(&w), 1);
  waiter_destroy(&w);
}

/* ---------------------------------------------------------------------------------------------
 * NULL arguments, one at a time, for every function
 * ------------------------------------------------------------------------------------------- */

static void test_nulls(tg_test_upstream *up) {
  section("NULL arguments");
  tg_error *err = NULL;
  tg_engine *e = call_engine(up, RETRY_POLICY);
  tg_engine *ce = call_engine(up, "[cache]\nenabled = true\n");
  if (e == NULL || ce == NULL) {
    tg_engine_free(e);
    tg_engine_free(ce);
    return;
  }
  const char *pol = "version = 1\n";
  const char *path = "/nonexistent/x.toml";
  tg_engine *eo = NULL;
  uint64_t gen = 0;

  /* Every free function accepts NULL. */
  tg_bytes_free(NULL);
  tg_cache_fill_free(NULL);
  tg_cache_wait_free(NULL);
  tg_cached_free(NULL);
  tg_task_free(NULL);
  tg_response_free(NULL);
  tg_permit_free(NULL);
  tg_attempt_free(NULL);
  tg_engine_free(NULL);
  tg_error_free(NULL);
  tg_test_upstream_free(NULL);
  tg_task_cancel(NULL);
  CHECK(true); /* reached: none crashed */

  /* tg_engine_new */
  EXPECT_NULL_ARG(tg_engine_new(NULL, 5, &eo, &err), &err, "policy");
  EXPECT_NULL_ARG(tg_engine_new(U(pol), strlen(pol), NULL, &err), &err, "out_engine");
  CHECK_STATUS(tg_engine_new(U(pol), strlen(pol), NULL, NULL), TG_STATUS_NULL_ARGUMENT);
  /* tg_engine_new_from_file */
  EXPECT_NULL_ARG(tg_engine_new_from_file(NULL, 5, &eo, &err), &err, "path");
  EXPECT_NULL_ARG(tg_engine_new_from_file(path, strlen(path), NULL, &err), &err, "out_engine");
  CHECK(eo == NULL);
  /* tg_engine_reload / tg_engine_reload_file */
  EXPECT_NULL_ARG(tg_engine_reload(NULL, U(pol), strlen(pol), &gen, &err), &err, "engine");
  EXPECT_NULL_ARG(tg_engine_reload(e, NULL, 5, &gen, &err), &err, "policy");
  EXPECT_NULL_ARG(tg_engine_reload_file(NULL, path, strlen(path), &gen, &err), &err, "engine");
  EXPECT_NULL_ARG(tg_engine_reload_file(e, NULL, 5, &gen, &err), &err, "path");
  CHECK_U64(gen, 0);
  CHECK_U64(tg_engine_generation(e), 1);
  /* tg_engine_generation */
  CHECK_U64(tg_engine_generation(NULL), 0);
  /* tg_engine_metrics */
  tg_bytes *m = NULL;
  EXPECT_NULL_ARG(tg_engine_metrics(NULL, &m, &err), &err, "engine");
  EXPECT_NULL_ARG(tg_engine_metrics(e, NULL, &err), &err, "out_text");
  CHECK(m == NULL);

  /* tg_error_* accessors */
  CHECK_STATUS(tg_error_status(NULL), TG_STATUS_NULL_ARGUMENT);
  CHECK(tg_error_message(NULL) != NULL && tg_error_message(NULL)[0] == '\0');
  CHECK(tg_error_code(NULL).len == 0);
  CHECK(tg_error_budget(NULL).len == 0);
  uint64_t ns = 12345;
  CHECK(!tg_error_retry_after(NULL, &ns));
  CHECK_U64(ns, 12345);
  CHECK_U64(tg_error_http_status(NULL), 0);
  CHECK(tg_error_body(NULL).len == 0);
  CHECK_U64(tg_error_problem_count(NULL), 0);
  CHECK(tg_error_problem(NULL, 0).len == 0);
  /* out_ns NULL on an error that has a retry time. */
  tg_engine *de =
      engine_from("version = 1\n[[budget]]\nname = \"n\"\nrequests_per_minute = 1\n");
  if (de != NULL) {
    GO_AND_SETTLE(de, "m");
    tg_decision d;
    EXPECT_OK(admit_tokens(de, "m", 1, &d, &err), &err);
    CHECK(d.kind == TG_DECISION_KIND_DENY && d.denial != NULL);
    CHECK(tg_error_retry_after(d.denial, &ns) && ns != 12345);
    CHECK(!tg_error_retry_after(d.denial, NULL));
    tg_error_free(d.denial);
    tg_engine_free(de);
  }

  /* tg_engine_admit / tg_engine_acquire */
  tg_call call;
  memset(&call, 0, sizeof call);
  call.model = S("m");
  tg_decision d;
  memset(&d, 0, sizeof d);
  EXPECT_NULL_ARG(tg_engine_admit(NULL, &call, &d, &err), &err, "engine");
  EXPECT_NULL_ARG(tg_engine_admit(e, NULL, &d, &err), &err, "call");
  EXPECT_NULL_ARG(tg_engine_admit(e, &call, NULL, &err), &err, "out_decision");
  CHECK(d.permit == NULL && d.denial == NULL);
  tg_permit *p = NULL;
  EXPECT_NULL_ARG(tg_engine_acquire(NULL, &call, &p, &err), &err, "engine");
  EXPECT_NULL_ARG(tg_engine_acquire(e, NULL, &p, &err), &err, "call");
  EXPECT_NULL_ARG(tg_engine_acquire(e, &call, NULL, &err), &err, "out_permit");
  CHECK(p == NULL);
  /* tg_engine_settle: NULL permit (the other NULLs are in "decide: settle and retry"). */
  tg_outcome o;
  memset(&o, 0, sizeof o);
  tg_verdict v;
  memset(&v, 0, sizeof v);
  EXPECT_NULL_ARG(tg_engine_settle(e, NULL, &o, &v, &err), &err, "permit");
  CHECK_STATUS(tg_engine_settle(e, NULL, &o, &v, NULL), TG_STATUS_NULL_ARGUMENT);
  CHECK(v.attempt == NULL && v.give_up == NULL);

  /* tg_permit_* accessors, with NULL and with a live permit and a NULL out pointer. */
  CHECK_U64(tg_permit_prompt_tokens(NULL), 0);
  CHECK_U64(tg_permit_reserved_tokens(NULL), 0);
  CHECK(tg_permit_estimated_cost(NULL) == 0.0);
  tg_target t;
  CHECK(!tg_permit_target(NULL, &t));
  EXPECT_OK(tg_engine_admit(e, &call, &d, &err), &err);
  CHECK(d.kind == TG_DECISION_KIND_GO);
  CHECK(!tg_permit_target(d.permit, NULL));
  /* tg_attempt_*: a live attempt from a 503 verdict. */
  EXPECT_OK(settle_status(e, d.permit, 503, &v, &err), &err);
  CHECK(v.kind == TG_VERDICT_KIND_RETRY && v.attempt != NULL);
  CHECK_U64(tg_attempt_number(NULL), 0);
  CHECK(!tg_attempt_target(NULL, &t));
  CHECK(!tg_attempt_target(v.attempt, NULL));
  verdict_free(&v);

  /* Routed calls: permit / attempt targets with live handles. */
  char routed[1024];
  snprintf(routed, sizeof routed,
           "[[upstream]]\nname = \"other\"\nbase_url = \"%s\"\n"
           "[[route]]\nmodel = \"smart\"\n"
           "targets = [{ upstream = \"test\", model = \"big-1\" }, "
           "{ upstream = \"other\", model = \"big-2\" }]\n%s",
           tg_test_upstream_base_url(up), RETRY_POLICY);
  tg_engine *re = call_engine(up, routed);
  if (re != NULL) {
    memset(&call, 0, sizeof call);
    call.model = S("smart");
    EXPECT_OK(tg_engine_admit(re, &call, &d, &err), &err);
    CHECK(d.kind == TG_DECISION_KIND_GO);
    memset(&t, 0, sizeof t);
    CHECK(tg_permit_target(d.permit, &t));
    CHECK_STR(t.upstream, "test");
    CHECK_STR(t.model, "big-1");
    CHECK_STR(t.route, "smart");
    CHECK(!tg_permit_target(d.permit, NULL));
    EXPECT_OK(settle_status(re, d.permit, 503, &v, &err), &err);
    CHECK(v.kind == TG_VERDICT_KIND_RETRY);
    memset(&t, 0, sizeof t);
    CHECK(tg_attempt_target(v.attempt, &t));
    CHECK_STR(t.upstream, "other");
    CHECK_STR(t.model, "big-2");
    CHECK(!tg_attempt_target(v.attempt, NULL));
    call.attempt = v.attempt;
    EXPECT_OK(tg_engine_admit(re, &call, &d, &err), &err);
    CHECK(d.kind == TG_DECISION_KIND_GO);
    memset(&t, 0, sizeof t);
    CHECK(tg_permit_target(d.permit, &t));
    CHECK_STR(t.upstream, "other");
    tg_permit_free(d.permit);
    verdict_free(&v);

    /* Through the call API: the response's target and history with a target. */
    const char *sreq = "{\"model\":\"smart\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                       "\"max_tokens\":4}";
    script(up, "{\"match\":{\"model\":\"big-1\"},\"actions\":[\"503\"]}");
    tg_response *rr = NULL;
    EXPECT_OK(tg_engine_send(re, U(sreq), strlen(sreq), NULL, &rr, &err), &err);
    memset(&t, 0, sizeof t);
    CHECK(tg_response_target(rr, &t));
    CHECK_STR(t.upstream, "other");
    CHECK_STR(t.model, "big-2");
    CHECK(!tg_response_target(rr, NULL));
    CHECK_U64(tg_response_attempts(rr), 2);
    tg_attempt_record rec;
    memset(&rec, 0, sizeof rec);
    CHECK(tg_response_history(rr, 0, &rec));
    CHECK(rec.has_target);
    CHECK_STR(rec.target.upstream, "test");
    CHECK_STR(rec.outcome, "status_503");
    tg_response_free(rr);
    tg_engine_free(re);
  }

  /* tg_response_*: NULL response, and a live response with NULL out pointers. */
  tg_usage u;
  tg_settlement s;
  tg_attempt_record rec;
  tg_str hv;
  CHECK_U64(tg_response_status(NULL), 0);
  CHECK(tg_response_body(NULL).len == 0);
  CHECK(tg_response_source(NULL) == TG_SOURCE_UPSTREAM);
  CHECK_U64(tg_response_attempts(NULL), 0);
  CHECK_U64(tg_response_queued_ns(NULL), 0);
  CHECK(!tg_response_usage(NULL, &u));
  CHECK(!tg_response_settlement(NULL, &s));
  CHECK(!tg_response_target(NULL, &t));
  CHECK(!tg_response_header(NULL, "content-type", 12, &hv));
  CHECK_U64(tg_response_history_len(NULL), 0);
  CHECK(!tg_response_history(NULL, 0, &rec));
  tg_response *r = NULL;
  script(up, "{\"actions\":[\"503\",\"normal\"]}");
  EXPECT_OK(tg_engine_send(e, U(REQ), strlen(REQ), NULL, &r, &err), &err);
  CHECK(r != NULL);
  CHECK(!tg_response_usage(r, NULL));
  CHECK(!tg_response_settlement(r, NULL));
  CHECK(!tg_response_header(r, NULL, 12, &hv));
  CHECK(!tg_response_header(r, "content-type", 12, NULL));
  CHECK(!tg_response_history(r, 0, NULL));
  CHECK(tg_response_history(r, 0, &rec)); /* the record exists: only the NULL made it false */
  tg_response_free(r);
  r = NULL;

  /* tg_engine_send / send_async / stream */
  waiter w;
  waiter_init(&w);
  tg_task *task = NULL;
  EXPECT_NULL_ARG(tg_engine_send(NULL, U(REQ), strlen(REQ), NULL, &r, &err), &err, "engine");
  EXPECT_NULL_ARG(tg_engine_send(e, NULL, 5, NULL, &r, &err), &err, "request");
  EXPECT_NULL_ARG(tg_engine_send(e, U(REQ), strlen(REQ), NULL, NULL, &err), &err,
                  "out_response");
  EXPECT_NULL_ARG(
      tg_engine_send_async(NULL, U(REQ), strlen(REQ), NULL, on_send, &w, &task, &err), &err,
      "engine");
  EXPECT_NULL_ARG(tg_engine_send_async(e, NULL, 5, NULL, on_send, &w, &task, &err), &err,
                  "request");
  EXPECT_NULL_ARG(tg_engine_send_async(e, U(REQ), strlen(REQ), NULL, NULL, &w, &task, &err),
                  &err, "callback");
  EXPECT_NULL_ARG(tg_engine_stream(NULL, U(REQ), strlen(REQ), NULL, on_stream, &w, &task, &err),
                  &err, "engine");
  EXPECT_NULL_ARG(tg_engine_stream(e, NULL, 5, NULL, on_stream, &w, &task, &err), &err,
                  "request");
  EXPECT_NULL_ARG(tg_engine_stream(e, U(REQ), strlen(REQ), NULL, NULL, &w, &task, &err), &err,
                  "callback");
  CHECK(r == NULL && task == NULL);
  /* user_data may be NULL: it is passed through untouched to every callback. */
  waiter_init(&g_null_ud);
  EXPECT_OK(tg_engine_send_async(e, U(REQ), strlen(REQ), NULL, on_send_null_ud, NULL, NULL, &err),
            &err);
  CHECK(wait_finals(&g_null_ud, 1, 30000));
  EXPECT_OK(tg_engine_stream(e, U(REQ), strlen(REQ), NULL, on_stream_null_ud, NULL, NULL, &err),
            &err);
  CHECK(wait_finals(&g_null_ud, 2, 30000));
  pthread_mutex_lock(&g_null_ud.mu);
  /* 1 send callback + every stream event + the stream's final callback. */
  CHECKM(g_null_ud_seen == 2 + g_null_ud.events && g_null_ud.events >= 3,
         "user_data NULL in every callback (%d calls, %d events)", g_null_ud_seen,
         g_null_ud.events);
  CHECK(g_null_ud.resp != NULL && g_null_ud.err == NULL);
  pthread_mutex_unlock(&g_null_ud.mu);
  /* tg_task_*: NULL */
  CHECK(tg_task_finished(NULL));

  /* tg_engine_cache_*: NULL engine consumes the fill (valgrind checks it is freed). */
  tg_cache_result cr;
  memset(&cr, 0, sizeof cr);
  EXPECT_NULL_ARG(tg_engine_cache_lookup(NULL, U(CREQ), strlen(CREQ), 0, &cr, &err), &err,
                  "engine");
  EXPECT_NULL_ARG(tg_engine_cache_lookup(ce, NULL, 5, 0, &cr, &err), &err, "request");
  tg_str null_tenant = {NULL, 3};
  EXPECT_NULL_ARG(
      tg_engine_cache_lookup_for(ce, null_tenant, U(CREQ), strlen(CREQ), 0, &cr, &err), &err,
      "tenant");
  EXPECT_NULL_ARG(tg_engine_cache_lookup_for(NULL, S("a"), U(CREQ), strlen(CREQ), 0, &cr, &err),
                  &err, "engine");
  EXPECT_NULL_ARG(tg_engine_cache_lookup(ce, U(CREQ), strlen(CREQ), 0, NULL, &err), &err,
                  "out_result");
  CHECK(cr.hit == NULL && cr.fill == NULL && cr.joined == NULL);
  const char *body = "{\"choices\":[]}";
  CHECK(lookup(ce, CREQ, 0, &cr) == TG_CACHE_KIND_MISS);
  EXPECT_NULL_ARG(tg_engine_cache_store(NULL, cr.fill, 200, U(body), strlen(body), NULL, &err),
                  &err, "engine");
  CHECK(lookup(ce, CREQ, 0, &cr) == TG_CACHE_KIND_MISS); /* the consumed fill was given up */
  EXPECT_NULL_ARG(tg_engine_cache_store(ce, cr.fill, 200, NULL, 5, NULL, &err), &err, "body");
  CHECK(lookup(ce, CREQ, 0, &cr) == TG_CACHE_KIND_MISS);
  EXPECT_NULL_ARG(tg_engine_cache_fail(NULL, cr.fill, "x", 1, &err), &err, "engine");
  CHECK(lookup(ce, CREQ, 0, &cr) == TG_CACHE_KIND_MISS);
  EXPECT_NULL_ARG(tg_engine_cache_fail(ce, cr.fill, NULL, 5, &err), &err, "message");
  CHECK(lookup(ce, CREQ, 0, &cr) == TG_CACHE_KIND_MISS);
  tg_cache_fill *fill = cr.fill;
  /* usage NULL is allowed; store with an empty body (NULL + 0) works too. */
  CHECK(lookup(ce, CREQ, 0, &cr) == TG_CACHE_KIND_JOINED);
  tg_cache_wait *wait = cr.joined;
  tg_cached *c = NULL;
  EXPECT_NULL_ARG(tg_cache_wait_join(NULL, 10, &c, &err), &err, "wait");
  EXPECT_NULL_ARG(tg_cache_wait_join(wait, 10, NULL, &err), &err, "out_cached");
  CHECK(c == NULL);
  EXPECT_OK(tg_engine_cache_store(ce, fill, 200, U(body), strlen(body), NULL, &err), &err);
  EXPECT_OK(tg_cache_wait_join(wait, 5000, &c, &err), &err);
  CHECK(!tg_cached_usage(c, &u)); /* stored without usage */
  CHECK(!tg_cached_usage(c, NULL));
  tg_cached_free(c);
  tg_cache_wait_free(wait);
  CHECK_U64(tg_cached_status(NULL), 0);
  CHECK(tg_cached_body(NULL).len == 0);
  CHECK(!tg_cached_usage(NULL, &u));

  /* testkit */
  tg_test_upstream *uo = NULL;
  EXPECT_NULL_ARG(tg_test_upstream_start(U("{}"), 2, NULL, &err), &err, "out_upstream");
  EXPECT_NULL_ARG(tg_test_upstream_start(NULL, 5, &uo, &err), &err, "options");
  CHECK(uo == NULL);
  CHECK(tg_test_upstream_base_url(NULL) != NULL && tg_test_upstream_base_url(NULL)[0] == '\0');
  const char *sc = "{\"actions\":[\"normal\"]}";
  EXPECT_NULL_ARG(tg_test_upstream_script(NULL, U(sc), strlen(sc), &err), &err, "upstream");
  EXPECT_NULL_ARG(tg_test_upstream_script(up, NULL, 5, &err), &err, "script");
  CHECK_U64(tg_test_upstream_requests(NULL), 0);

  /* Every failing function with err == NULL still returns its status. */
  CHECK_STATUS(tg_engine_admit(NULL, &call, &d, NULL), TG_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(tg_engine_metrics(NULL, &m, NULL), TG_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(tg_engine_send(NULL, U(REQ), strlen(REQ), NULL, &r, NULL),
               TG_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(tg_engine_send_async(e, U(REQ), strlen(REQ), NULL, NULL, NULL, NULL, NULL),
               TG_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(tg_engine_cache_lookup(NULL, U(CREQ), strlen(CREQ), 0, &cr, NULL),
               TG_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(tg_test_upstream_script(NULL, U(sc), strlen(sc), NULL), TG_STATUS_NULL_ARGUMENT);

  tg_engine_free(e);
  tg_engine_free(ce);
  CHECK_U64(finals_of(&w), 0); /* no callback for a refused start */
  waiter_destroy(&w);
  CHECK_U64(finals_of(&g_null_ud), 2);
  waiter_destroy(&g_null_ud);
}

/* ---------------------------------------------------------------------------------------------
 * Testkit and panic
 * ------------------------------------------------------------------------------------------- */

static void test_testkit(tg_test_upstream *up) {
  section("testkit");
  tg_error *err = NULL;
  const char *url = tg_test_upstream_base_url(up);
  CHECK(strncmp(url, "http://127.0.0.1:", 17) == 0);
  CHECK(cstr_has(url, "/v1"));
  tg_test_upstream *u2 = NULL;
  const char *opts = "{\"latency_ms\": 0, \"words\": 4, \"seed\": 7}";
  EXPECT_OK(tg_test_upstream_start(U(opts), strlen(opts), &u2, &err), &err);
  CHECK(u2 != NULL);
  CHECK_U64(tg_test_upstream_requests(u2), 0);
  CHECK(strcmp(tg_test_upstream_base_url(u2), url) != 0); /* another port */
  tg_test_upstream_free(u2);
  u2 = NULL;
  EXPECT_ERR(tg_test_upstream_start(U(opts), 10, &u2, &err), &err, TG_STATUS_INVALID_JSON,
             "options");
  const char *unknown = "{\"no_such_option\": 1}";
  EXPECT_ERR(tg_test_upstream_start(U(unknown), strlen(unknown), &u2, &err), &err,
             TG_STATUS_INVALID_ARGUMENT, "options");
  CHECK(u2 == NULL);
  const char *bad_action = "{\"actions\":[\"explode\"]}";
  EXPECT_ERR(tg_test_upstream_script(up, U(bad_action), strlen(bad_action), &err), &err,
             TG_STATUS_INVALID_ARGUMENT, "explode");
  EXPECT_ERR(tg_test_upstream_script(up, U(bad_action), 8, &err), &err, TG_STATUS_INVALID_JSON,
             "script");
  const char *bad_utf8 = "{\"actions\":[\"\xff\"]}";
  EXPECT_ERR(tg_test_upstream_script(up, U(bad_utf8), strlen(bad_utf8), &err), &err,
             TG_STATUS_INVALID_UTF8, "script");
}

static void test_panic(void) {
  section("panic");
  tg_error *err = NULL;
  tg_status st = tg_test_panic(&err);
  CHECK_STATUS(st, TG_STATUS_PANIC);
  CHECK(err != NULL);
  if (err != NULL) {
    CHECK_STATUS(tg_error_status(err), TG_STATUS_PANIC);
    CHECK(cstr_has(tg_error_message(err), "panic"));
    CHECK(cstr_has(tg_error_message(err), "tg_test_panic was called"));
    CHECK_STR(tg_error_code(err), "panic");
  }
  tg_error_free(err);
  CHECK_STATUS(tg_test_panic(NULL), TG_STATUS_PANIC);
  /* The library still works after a caught panic. */
  tg_engine *e = engine_from("version = 1\n");
  CHECK(e != NULL);
  tg_engine_free(e);
}

/* What a policy watch reported. */
typedef struct watch_seen {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int calls;
  uint64_t last_generation;
  tg_status last_status; /* TG_STATUS_OK after a reload */
  size_t last_problems;
} watch_seen;

static void on_watch(void *user_data, uint64_t generation, const tg_error *error) {
  watch_seen *w = user_data;
  pthread_mutex_lock(&w->mu);
  w->calls++;
  w->last_generation = generation;
  w->last_status = error == NULL ? TG_STATUS_OK : tg_error_status(error);
  w->last_problems = tg_error_problem_count(error);
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* Waits (at most 10 s) until the watch has reported `n` times. */
static bool wait_watch(watch_seen *w, int n) {
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 10;
  pthread_mutex_lock(&w->mu);
  while (w->calls < n) {
    if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) == ETIMEDOUT) break;
  }
  bool ok = w->calls >= n;
  pthread_mutex_unlock(&w->mu);
  return ok;
}

static void rewrite(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  if (f == NULL) return;
  CHECK(fputs(text, f) >= 0);
  CHECK(fclose(f) == 0);
}

static void test_watch_and_stats(void) {
  section("watch and stats");
  tg_error *err = NULL;
  const char *first = "version = 1\n[[budget]]\nname = \"watched\"\nrequests_per_minute = 5\n";
  char path[4096];
  if (!temp_file(path, sizeof path, first, strlen(first))) {
    CHECKM(false, "cannot write a temporary policy file");
    return;
  }
  tg_engine *e = NULL;
  EXPECT_OK(tg_engine_new_from_file(path, strlen(path), &e, &err), &err);
  if (e == NULL) return;

  /* stats: JSON with the budget and its counters. */
  tg_decision d;
  EXPECT_OK(admit_tokens(e, "gpt-4o", 10, &d, &err), &err);
  tg_outcome o;
  memset(&o, 0, sizeof o);
  o.sent = true;
  o.status = 200;
  tg_verdict v;
  EXPECT_OK(tg_engine_settle(e, d.permit, &o, &v, &err), &err);
  tg_bytes *json = NULL;
  EXPECT_OK(tg_engine_stats(e, &json, &err), &err);
  if (json != NULL) {
    char text[4096];
    size_t n = json->len < sizeof text - 1 ? json->len : sizeof text - 1;
    memcpy(text, json->data, n);
    text[n] = '\0';
    CHECKM(strstr(text, "\"name\":\"watched\"") != NULL, "stats: %s", text);
    CHECKM(strstr(text, "\"admitted\":1") != NULL, "stats: %s", text);
    CHECKM(strstr(text, "\"cache\":{") != NULL, "stats: %s", text);
    tg_bytes_free(json);
  }
  tg_bytes *none = NULL;
  EXPECT_NULL_ARG(tg_engine_stats(NULL, &none, &err), &err, "engine");
  EXPECT_NULL_ARG(tg_engine_stats(e, NULL, &err), &err, "out_json");
  CHECK(none == NULL);

  /* watch: a changed file is reloaded, a bad one refused with every problem. */
  watch_seen w;
  memset(&w, 0, sizeof w);
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  tg_watcher *watcher = NULL;
  tg_watcher *wo = NULL;
  EXPECT_NULL_ARG(tg_engine_watch(NULL, path, strlen(path), 20, on_watch, &w, &wo, &err), &err,
                  "engine");
  EXPECT_NULL_ARG(tg_engine_watch(e, NULL, 3, 20, on_watch, &w, &wo, &err), &err, "path");
  EXPECT_NULL_ARG(tg_engine_watch(e, path, strlen(path), 20, on_watch, &w, NULL, &err), &err,
                  "out_watcher");
  EXPECT_ERR(tg_engine_watch(e, path, 0, 20, on_watch, &w, &wo, &err), &err,
             TG_STATUS_INVALID_ARGUMENT, "path");
  CHECK(wo == NULL);
  tg_watcher_free(NULL);
  EXPECT_OK(tg_engine_watch(e, path, strlen(path), 20, on_watch, &w, &watcher, &err), &err);

  rewrite(path, "version = 1\n[[budget]]\nname = \"watched\"\nrequests_per_minute = 50\n");
  CHECKM(wait_watch(&w, 1), "the watch saw no change");
  pthread_mutex_lock(&w.mu);
  CHECK_U64(w.last_generation, 2);
  CHECK_STATUS(w.last_status, TG_STATUS_OK);
  pthread_mutex_unlock(&w.mu);
  CHECK_U64(tg_engine_generation(e), 2);

  rewrite(path, TWO_PROBLEMS);
  CHECKM(wait_watch(&w, 2), "the watch did not report the bad file");
  pthread_mutex_lock(&w.mu);
  CHECK_U64(w.last_generation, 0);
  CHECK_STATUS(w.last_status, TG_STATUS_INVALID_POLICY);
  CHECK(w.last_problems >= 2);
  pthread_mutex_unlock(&w.mu);
  CHECK_U64(tg_engine_generation(e), 2);

  tg_watcher_free(watcher);
  pthread_cond_destroy(&w.cv);
  pthread_mutex_destroy(&w.mu);
  tg_engine_free(e);
  unlink(path);
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  test_version();
  test_create();
  test_reload();
  test_decide_budgets();
  test_decide_prompts();
  test_decide_retry();
  test_cache();
  test_cache_scope();
  test_watch_and_stats();

  section("test upstream");
  tg_test_upstream *up = NULL;
  tg_error *err = NULL;
  EXPECT_OK(tg_test_upstream_start(NULL, 0, &up, &err), &err);
  if (up != NULL) {
    test_testkit(up);
    test_send(up);
    test_tokens(up);
    test_async(up);
    test_stream(up);
    test_wrong_thread(up);
    test_nulls(up);
    tg_test_upstream_free(up);
  }
  test_panic();

  printf("c ffi tests: %u passed, %u failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
