/*
 * Install test of the C prefix: a C program that knows tollgate only through the installed
 * prefix (CMake's find_package or pkg-config). Admit + settle against a budget, then one send
 * through the test upstream whose base URL is the first argument. Exits 1 on any failure.
 */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <string.h>

#include <tollgate.h>

static int failures = 0;

#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (!(cond)) {                                          \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
      fprintf(stderr, __VA_ARGS__);                         \
      fprintf(stderr, "\n");                                \
      failures++;                                           \
    }                                                       \
  } while (0)

static tg_str str(const char *s) {
  tg_str v = {s, strlen(s)};
  return v;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s BASE_URL\n", argv[0]);
    return 2;
  }
  CHECK(strcmp(tg_version(), TOLLGATE_VERSION) == 0, "library %s, header %s", tg_version(),
        TOLLGATE_VERSION);

  char policy[1024];
  snprintf(policy, sizeof policy,
           "version = 1\n"
           "[[upstream]]\nname = \"test\"\nbase_url = \"%s\"\n"
           "[[route]]\nmodel = \"gpt-4o-mini\"\n"
           "targets = [{ upstream = \"test\", model = \"gpt-4o-mini\" }]\n"
           "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 2\n",
           argv[1]);
  tg_engine *engine = NULL;
  tg_error *err = NULL;
  tg_status st = tg_engine_new((const uint8_t *)policy, strlen(policy), &engine, &err);
  if (st != TG_STATUS_OK) {
    fprintf(stderr, "FAIL: tg_engine_new: %s\n", tg_error_message(err));
    tg_error_free(err);
    return 1;
  }

  /* The decide API: the first call goes and is settled, the second goes, the third is refused. */
  tg_call call;
  memset(&call, 0, sizeof call);
  call.tenant = str("acme");
  call.model = str("gpt-4o-mini");
  call.prompt_tokens = 12;
  tg_decision d;
  st = tg_engine_admit(engine, &call, &d, NULL);
  CHECK(st == TG_STATUS_OK && d.kind == TG_DECISION_KIND_GO, "first admit: status %d kind %d",
        (int)st, (int)d.kind);
  if (st == TG_STATUS_OK && d.kind == TG_DECISION_KIND_GO) {
    tg_outcome o;
    memset(&o, 0, sizeof o);
    o.sent = true;
    o.status = 200;
    tg_verdict v;
    st = tg_engine_settle(engine, d.permit, &o, &v, NULL);
    CHECK(st == TG_STATUS_OK && v.kind == TG_VERDICT_KIND_DONE, "settle: status %d", (int)st);
  }

  /* The call API: one send through the test upstream takes the budget's second request. */
  const char *request =
      "{\"model\": \"gpt-4o-mini\", \"max_tokens\": 5,"
      " \"messages\": [{\"role\": \"user\", \"content\": \"hello from C\"}]}";
  tg_request_options options;
  memset(&options, 0, sizeof options);
  options.tenant = str("acme");
  tg_response *response = NULL;
  st = tg_engine_send(engine, (const uint8_t *)request, strlen(request), &options, &response,
                      &err);
  if (st != TG_STATUS_OK) {
    CHECK(0, "send: %s", tg_error_message(err));
    tg_error_free(err);
  } else {
    tg_str body = tg_response_body(response);
    CHECK(tg_response_status(response) == 200, "send: HTTP %u", tg_response_status(response));
    CHECK(body.len > 0 && memmem(body.ptr, body.len, "chat.completion", 15) != NULL,
          "send: body %.*s", (int)body.len, body.ptr);
    tg_usage usage;
    CHECK(tg_response_usage(response, &usage) && usage.completion_tokens == 5,
          "send: usage missing or not 5 completion tokens");
    tg_response_free(response);
  }

  st = tg_engine_admit(engine, &call, &d, NULL);
  CHECK(st == TG_STATUS_OK && d.kind == TG_DECISION_KIND_DENY, "third call: kind %d", (int)d.kind);
  if (st == TG_STATUS_OK && d.kind == TG_DECISION_KIND_DENY) {
    CHECK(d.budget.len == 10 && memcmp(d.budget.ptr, "per-tenant", 10) == 0, "denied by %.*s",
          (int)d.budget.len, d.budget.ptr);
    tg_error_free(d.denial);
  } else if (st == TG_STATUS_OK && d.kind == TG_DECISION_KIND_GO) {
    tg_permit_free(d.permit);
  }

  tg_engine_free(engine);
  printf("c install test (%s): %s\n", tg_version(), failures == 0 ? "ok" : "FAILED");
  return failures == 0 ? 0 : 1;
}
