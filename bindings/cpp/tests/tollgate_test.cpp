// GoogleTest suite of the C++ binding, against the in-process test upstream (loopback only).
//
// Every wait is bounded: futures are waited for with kBound and asserted ready, polls give up
// after kBound. Each test starts its own upstream and engine.

#include "tollgate_testkit.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <unistd.h>
#include <vector>

namespace tg = tollgate;
using namespace std::chrono_literals;

namespace {

constexpr auto kBound = 10s;
// The reply of the test upstream for max_tokens = 8: its vocabulary, in order.
constexpr const char* kEightWords = "lorem ipsum dolor sit amet consectetur adipiscing elit";

std::string chat(const std::string& model, const std::string& text, int max_tokens = 8) {
  return R"({"model":")" + model + R"(","messages":[{"role":"user","content":")" + text +
         R"("}],"max_tokens":)" + std::to_string(max_tokens) + "}";
}

/// The concatenated `content` strings of a JSON text (chunks or a whole completion). Enough for
/// the test upstream's replies: plain words, no escapes.
std::string contents(const std::string& json) {
  std::string out;
  const std::string key = R"("content":")";
  for (auto at = json.find(key); at != std::string::npos; at = json.find(key, at)) {
    at += key.size();
    const auto end = json.find('"', at);
    if (end == std::string::npos) break;
    out += json.substr(at, end - at);
    at = end;
  }
  return out;
}

/// Runs `f`, which must throw tollgate::Error, and returns the error.
template <typename F>
tg::Error expect_error(F&& f) {
  try {
    f();
  } catch (const tg::Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected a tollgate::Error";
  return tg::Error(tg::Status::Ok, "no error was thrown");
}

/// Polls `cond` until true or kBound passed.
template <typename F>
bool eventually(F&& cond) {
  const auto until = std::chrono::steady_clock::now() + kBound;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return cond();
}

std::chrono::milliseconds since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               t0);
}

// Handles are move-only; errors are copyable exceptions.
static_assert(!std::is_copy_constructible_v<tg::Engine>);
static_assert(std::is_nothrow_move_constructible_v<tg::Engine>);
static_assert(!std::is_copy_constructible_v<tg::Permit>);
static_assert(!std::is_copy_constructible_v<tg::Attempt>);
static_assert(!std::is_copy_constructible_v<tg::Response>);
static_assert(!std::is_copy_constructible_v<tg::Pending>);
static_assert(!std::is_copy_constructible_v<tg::Task>);
static_assert(!std::is_copy_constructible_v<tg::EventStream>);
static_assert(!std::is_copy_constructible_v<tg::Decision>);
static_assert(!std::is_copy_constructible_v<tg::Verdict>);
static_assert(std::is_nothrow_copy_constructible_v<tg::Error>);
static_assert(std::is_base_of_v<std::runtime_error, tg::Error>);

class Tollgate : public ::testing::Test {
 protected:
  void SetUp() override { upstream = tg::testkit::Upstream::start(); }

  /// A policy with the test upstream as its only upstream, then `rest`.
  std::string policy(const std::string& rest = "") const {
    return "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"" + upstream.base_url() +
           "\"\n" + rest;
  }
  tg::Engine engine(const std::string& rest = "") const {
    return tg::Engine::from_text(policy(rest));
  }

  tg::testkit::Upstream upstream;
};

const char* kFastRetry = "[retry]\nbackoff = { base = \"10ms\", max = \"20ms\" }\n";

// ---------------------------------------------------------------------------------------------
// Version
// ---------------------------------------------------------------------------------------------

TEST(Version, LibraryMatchesHeader) {
  EXPECT_EQ(tg::version(), tg::header_version);
  EXPECT_EQ(tg::header_version, std::to_string(tg::version_major) + "." +
                                    std::to_string(tg::version_minor) + "." +
                                    std::to_string(tg::version_patch));
  EXPECT_EQ(tg::to_string(tg::Status::Denied), "denied");
  EXPECT_EQ(tg::to_string(tg::Status::StreamCut), "stream_cut");
}

// ---------------------------------------------------------------------------------------------
// Decide API: admit / settle
// ---------------------------------------------------------------------------------------------

TEST_F(Tollgate, DecideGoThenSettleDoneChargesTheUsage) {
  auto e = engine("[[budget]]\nname = \"tokens\"\ntokens_per_minute = 100000\n");
  tg::Decision d =
      e.admit(tg::Call("gpt-4o").with_tenant("acme").with_prompt_tokens(10).with_max_tokens(20));
  ASSERT_TRUE(d.go());
  ASSERT_TRUE(d.permit.has_value());
  ASSERT_TRUE(*d.permit);
  EXPECT_FALSE(d.denial.has_value());
  EXPECT_EQ(d.permit->prompt_tokens(), 10u);
  EXPECT_EQ(d.permit->reserved_tokens(), 30u);

  tg::Usage usage;
  usage.prompt_tokens = 10;
  usage.completion_tokens = 5;
  usage.total_tokens = 15;
  tg::Outcome outcome = tg::Outcome::http(200, usage);
  outcome.latency = 120ms;
  outcome.headers.emplace_back("x-request-id", "abc");
  tg::Verdict v = e.settle(std::move(*d.permit), outcome);
  EXPECT_FALSE(*d.permit) << "settle consumes the permit";
  ASSERT_TRUE(v.done());
  EXPECT_EQ(v.settlement.reserved_tokens, 30u);
  EXPECT_EQ(v.settlement.tokens, 15u);
  ASSERT_TRUE(v.settlement.usage.has_value());
  EXPECT_EQ(v.settlement.usage->completion_tokens, 5u);
  EXPECT_FALSE(v.attempt.has_value());
  EXPECT_FALSE(v.give_up.has_value());
}

TEST_F(Tollgate, DecideWaitNamesTheBudgetAndHoldsNothing) {
  auto e = engine(
      "[[budget]]\nname = \"queue\"\nrequests_per_second = 1\nburst = 1\n"
      "when_exhausted = { wait_up_to = \"5s\" }\n");
  tg::Decision first = e.admit(tg::Call("gpt-4o").with_prompt_tokens(1));
  ASSERT_TRUE(first.go());
  tg::Decision second = e.admit(tg::Call("gpt-4o").with_prompt_tokens(1));
  ASSERT_TRUE(second.wait());
  EXPECT_EQ(second.budget, "queue");
  EXPECT_EQ(second.limit, tg::Limit::RequestsPerSecond);
  EXPECT_GT(second.after, 0ns);
  EXPECT_LE(second.after, 1s);
  EXPECT_FALSE(second.permit.has_value());
  EXPECT_FALSE(second.denial.has_value());
}

TEST_F(Tollgate, DecideDenyCarriesTheErrorWithBudgetAndCode) {
  auto e = engine(
      "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 1\n");
  // Keep the first permit: freeing it unsettled would refund its request.
  tg::Decision first = e.admit(tg::Call("gpt-4o").with_tenant("t1"));
  ASSERT_TRUE(first.go());
  tg::Decision d = e.admit(tg::Call("gpt-4o").with_tenant("t1"));
  ASSERT_TRUE(d.deny());
  EXPECT_EQ(d.budget, "per-tenant");
  EXPECT_EQ(d.limit, tg::Limit::RequestsPerMinute);
  EXPECT_GT(d.after, 0ns);
  ASSERT_TRUE(d.denial.has_value());
  EXPECT_EQ(d.denial->status(), tg::Status::Denied);
  EXPECT_EQ(d.denial->code(), "budget_exhausted");
  EXPECT_EQ(d.denial->budget(), "per-tenant");
  ASSERT_TRUE(d.denial->retry_after().has_value());
  EXPECT_GT(*d.denial->retry_after(), 0ns);
  EXPECT_NE(std::string(d.denial->what()).find("per-tenant"), std::string::npos);
  // Another tenant has its own state.
  EXPECT_TRUE(e.admit(tg::Call("gpt-4o").with_tenant("t2")).go());
}

TEST_F(Tollgate, DecideRetryGivesAnAttemptToReadmitWith) {
  auto e = engine(kFastRetry);
  tg::Decision d = e.admit(tg::Call("gpt-4o").with_prompt_tokens(5));
  ASSERT_TRUE(d.go());
  tg::Verdict v = e.settle(std::move(*d.permit), tg::Outcome::http(503));
  ASSERT_TRUE(v.retry());
  ASSERT_TRUE(v.attempt.has_value());
  EXPECT_EQ(v.attempt->number(), 2u);
  EXPECT_LE(v.retry_after, 1s);
  EXPECT_FALSE(v.give_up.has_value());

  tg::Decision again = e.admit(tg::Call("gpt-4o").with_prompt_tokens(5).with_attempt(*v.attempt));
  ASSERT_TRUE(again.go());
  tg::Verdict done = e.settle(std::move(*again.permit), tg::Outcome::http(200));
  EXPECT_TRUE(done.done());
}

TEST_F(Tollgate, DecideGivesUpWithAnError) {
  auto e = engine(std::string(kFastRetry) + "max_attempts = 2\n");
  // Not retryable at all.
  tg::Decision d = e.admit(tg::Call("gpt-4o"));
  ASSERT_TRUE(d.go());
  tg::Verdict v = e.settle(std::move(*d.permit), tg::Outcome::http(400));
  ASSERT_TRUE(v.gave_up());
  ASSERT_TRUE(v.give_up.has_value());
  EXPECT_EQ(v.give_up->status(), tg::Status::GaveUp);
  EXPECT_EQ(v.give_up->code(), "not_retryable");
  EXPECT_FALSE(v.attempt.has_value());

  // Retryable, until the attempts run out.
  tg::Decision first = e.admit(tg::Call("gpt-4o"));
  tg::Verdict retry =
      e.settle(std::move(*first.permit), tg::Outcome::failed(tg::Failure::ConnectRefused));
  ASSERT_TRUE(retry.retry());
  tg::Decision second = e.admit(tg::Call("gpt-4o").with_attempt(*retry.attempt));
  ASSERT_TRUE(second.go());
  tg::Verdict last = e.settle(std::move(*second.permit), tg::Outcome::http(503));
  ASSERT_TRUE(last.gave_up());
  EXPECT_EQ(last.give_up->code(), "attempts_exhausted");
}

TEST_F(Tollgate, AcquireReturnsAPermitOrThrowsTheDenial) {
  auto e = engine("[[budget]]\nname = \"one\"\nconcurrency = 1\n");
  tg::Permit p = e.acquire(tg::Call("gpt-4o"));
  ASSERT_TRUE(p);
  tg::Error err = expect_error([&] { (void)e.acquire(tg::Call("gpt-4o")); });
  EXPECT_EQ(err.status(), tg::Status::Denied);
  EXPECT_EQ(err.code(), "concurrency");
  EXPECT_EQ(err.budget(), "one");
  p = tg::Permit();  // freeing the permit releases the slot
  EXPECT_TRUE(e.acquire(tg::Call("gpt-4o")));
}

TEST_F(Tollgate, SettleConsumesThePermitEvenWhenItFails) {
  auto e = engine("[[budget]]\nname = \"one\"\nconcurrency = 1\n");
  tg::Decision d = e.admit(tg::Call("gpt-4o"));
  ASSERT_TRUE(d.go());
  tg::Outcome bad = tg::Outcome::http(200);
  bad.failure = static_cast<tg::Failure>(99);
  tg::Error err = expect_error([&] { (void)e.settle(std::move(*d.permit), bad); });
  EXPECT_EQ(err.status(), tg::Status::InvalidArgument);
  EXPECT_FALSE(*d.permit);
  EXPECT_TRUE(e.admit(tg::Call("gpt-4o")).go()) << "the slot was released";
  // An empty permit is a NULL argument, reported as an Error.
  EXPECT_EQ(expect_error([&] { (void)e.settle(tg::Permit(), tg::Outcome()); }).status(),
            tg::Status::NullArgument);
}

// ---------------------------------------------------------------------------------------------
// Cache API
// ---------------------------------------------------------------------------------------------

TEST_F(Tollgate, CacheMissJoinStoreHit) {
  auto e = engine("[cache]\nenabled = true\n");
  const std::string req =
      R"({"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"q"}]})";
  tg::CacheLookup miss = e.cache_lookup(req);
  ASSERT_EQ(miss.kind, tg::CacheKind::Miss);
  ASSERT_TRUE(miss.fill.has_value());
  tg::CacheLookup joined = e.cache_lookup(req);
  ASSERT_EQ(joined.kind, tg::CacheKind::Joined);
  ASSERT_TRUE(joined.joined.has_value());

  tg::Usage u;
  u.prompt_tokens = 3;
  u.completion_tokens = 2;
  e.cache_store(std::move(*miss.fill), 200, R"({"answer":1})", u);
  EXPECT_FALSE(*miss.fill);
  tg::Cached shared = joined.joined->join(kBound);
  EXPECT_EQ(shared.status(), 200);
  EXPECT_EQ(shared.body(), R"({"answer":1})");

  tg::CacheLookup hit = e.cache_lookup(req);
  ASSERT_EQ(hit.kind, tg::CacheKind::Hit);
  EXPECT_EQ(hit.hit->body(), R"({"answer":1})");
  ASSERT_TRUE(hit.hit->usage().has_value());
  EXPECT_EQ(hit.hit->usage()->completion_tokens, 2u);

  tg::CacheLookup hot = e.cache_lookup(
      R"({"model":"gpt-4o","temperature":1,"messages":[{"role":"user","content":"q"}]})");
  EXPECT_EQ(hot.kind, tg::CacheKind::NotCacheable);
  EXPECT_EQ(hot.reason, "temperature");
}

TEST_F(Tollgate, CacheEntriesAreScopedByTenant) {
  auto e = engine("[cache]\nenabled = true\n");
  const std::string req =
      R"({"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"mine"}]})";
  tg::CacheLookup acme = e.cache_lookup(req, tg::CacheMode::Default, "acme");
  ASSERT_EQ(acme.kind, tg::CacheKind::Miss);
  // Another tenant neither joins acme's call in flight nor sees its entry.
  EXPECT_EQ(e.cache_lookup(req, tg::CacheMode::Default, "globex").kind, tg::CacheKind::Miss);
  e.cache_store(std::move(*acme.fill), 200, R"({"answer":"acme's"})");
  EXPECT_EQ(e.cache_lookup(req, tg::CacheMode::Default, "acme").kind, tg::CacheKind::Hit);
  EXPECT_EQ(e.cache_lookup(req, tg::CacheMode::Default, "globex").kind, tg::CacheKind::Miss);
  EXPECT_EQ(e.cache_lookup(req).kind, tg::CacheKind::Miss);

  auto shared = engine("[cache]\nenabled = true\nscope = \"shared\"\n");
  tg::CacheLookup first = shared.cache_lookup(req, tg::CacheMode::Default, "acme");
  ASSERT_EQ(first.kind, tg::CacheKind::Miss);
  shared.cache_store(std::move(*first.fill), 200, R"({"answer":"anyone's"})");
  tg::CacheLookup other = shared.cache_lookup(req, tg::CacheMode::Default, "globex");
  ASSERT_EQ(other.kind, tg::CacheKind::Hit);
  EXPECT_EQ(other.hit->body(), R"({"answer":"anyone's"})");
}

TEST_F(Tollgate, CountsAndSplitsWithThePolicysModelTable) {
  auto e = engine("[models]\nmy-model = { encoding = \"cl100k_base\", context_window = 4096 }\n");
  const tg::TokenCount hello = e.count_tokens("gpt-4o", "hello world");
  EXPECT_EQ(hello.tokens, 2u);
  EXPECT_TRUE(hello.exact);
  EXPECT_FALSE(e.count_tokens("qwen-max", "hello world").exact);
  EXPECT_EQ(e.context_window("my-model"), std::optional<std::uint64_t>(4096));
  EXPECT_EQ(e.context_window("nobody-knows"), std::nullopt);

  // The prompt count is the one the upstream bills.
  const std::string req = chat("gpt-4o", "how many tokens is this prompt?");
  const tg::TokenCount prompt = e.count_request(req);
  const tg::Response r = e.send(req);
  ASSERT_TRUE(r.usage().has_value());
  EXPECT_EQ(prompt.tokens, r.usage()->prompt_tokens);

  std::string text;
  for (int i = 0; i < 60; ++i) {
    text += (i % 3 == 2) ? "GCRA keeps one timestamp per key.\n\n"
                         : "Rate limits protect the upstream; clients that ignore them meet 429s. ";
  }
  const std::vector<tg::Chunk> chunks = e.split_text("my-model", text, 40);
  ASSERT_GT(chunks.size(), 5u);
  std::string joined;
  for (const tg::Chunk& c : chunks) {
    EXPECT_LE(c.tokens, 40u);
    EXPECT_EQ(c.tokens, e.count_tokens("my-model", c.text).tokens);
    EXPECT_EQ(c.text, std::string_view(text).substr(c.start, c.end - c.start));
    joined += c.text;
  }
  EXPECT_EQ(joined, text);
  const std::vector<tg::Chunk> overlapping = e.split_text("gpt-4o", text, 40, 8);
  for (std::size_t i = 1; i < overlapping.size(); ++i) {
    EXPECT_GT(overlapping[i].overlap, 0u);
    EXPECT_EQ(overlapping[i].start + overlapping[i].overlap, overlapping[i - 1].end);
  }

  for (const auto& [call, code] : std::vector<std::pair<std::function<void()>, std::string>>{
           {[&] { (void)e.split_text("gpt-4o", text, 0); }, "zero_max"},
           {[&] { (void)e.split_text("gpt-4o", text, 10, 10); }, "overlap_too_large"},
           {[&] { (void)e.split_text("my-model", text, 5000); }, "exceeds_context_window"},
           {[&] { (void)e.split_text("no-such-model", text, 10); }, "unknown_model"},
           {[&] { (void)e.count_tokens("no-such-model", text); }, "unknown_model"},
       }) {
    const tg::Error err = expect_error(call);
    EXPECT_EQ(err.status(), tg::Status::InvalidArgument) << code;
    EXPECT_EQ(err.code(), code);
  }
  EXPECT_EQ(expect_error([&] { (void)e.count_request("{nope"); }).status(), tg::Status::InvalidJson);
}

TEST_F(Tollgate, CacheFailReachesTheWaiters) {
  auto e = engine("[cache]\nenabled = true\n");
  const std::string req =
      R"({"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"f"}]})";
  tg::CacheLookup miss = e.cache_lookup(req);
  tg::CacheLookup joined = e.cache_lookup(req);
  ASSERT_EQ(joined.kind, tg::CacheKind::Joined);
  e.cache_fail(std::move(*miss.fill), "upstream said no");
  tg::Error err = expect_error([&] { (void)joined.joined->join(kBound); });
  EXPECT_EQ(err.status(), tg::Status::Shared);
  EXPECT_NE(std::string(err.what()).find("upstream said no"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Call API: blocking send
// ---------------------------------------------------------------------------------------------

TEST_F(Tollgate, SendReturnsTheAnswerWithUsageAndCharge) {
  auto e = engine();
  tg::Response r = e.send(chat("gpt-4o", "hello"), tg::RequestOptions().with_tenant("acme"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r.status(), 200);
  EXPECT_EQ(r.source(), tg::Source::Upstream);
  EXPECT_EQ(r.attempts(), 1u);
  EXPECT_EQ(contents(r.body_string()), kEightWords);
  ASSERT_TRUE(r.usage().has_value());
  EXPECT_EQ(r.usage()->completion_tokens, 8u);
  ASSERT_TRUE(r.settlement().has_value());
  EXPECT_EQ(r.settlement()->tokens, r.usage()->total_tokens);
  EXPECT_TRUE(r.header("X-Request-Id").has_value());
  EXPECT_FALSE(r.header("x-not-there").has_value());
  EXPECT_TRUE(r.history().empty());
  EXPECT_EQ(upstream.requests(), 1u);
}

TEST_F(Tollgate, SendRetriesAndKeepsTheHistory) {
  auto e = engine(kFastRetry);
  upstream.script(R"({"actions":["503","normal"]})");
  tg::Response r = e.send(chat("gpt-4o", "retry me"));
  EXPECT_EQ(r.status(), 200);
  EXPECT_EQ(r.attempts(), 2u);
  const auto history = r.history();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_EQ(history[0].number, 1u);
  EXPECT_EQ(history[0].outcome, "status_503");
  EXPECT_EQ(upstream.requests(), 2u);
}

TEST_F(Tollgate, SendGivesUpWithTheUpstreamStatusAndBody) {
  auto e = engine();
  upstream.script(R"({"actions":["status:400"]})");
  tg::Error err = expect_error([&] { (void)e.send(chat("gpt-4o", "bad")); });
  EXPECT_EQ(err.status(), tg::Status::GaveUp);
  EXPECT_EQ(err.http_status(), 400);
  EXPECT_FALSE(err.body().empty());
  EXPECT_EQ(upstream.requests(), 1u);
}

// ---------------------------------------------------------------------------------------------
// Call API: async
// ---------------------------------------------------------------------------------------------

TEST_F(Tollgate, AsyncFutureResolvesWithTheResponse) {
  auto e = engine();
  tg::Pending p = e.send_async(chat("gpt-4o", "async"));
  ASSERT_EQ(p.wait_for(kBound), std::future_status::ready);
  tg::Response r = p.get();
  EXPECT_EQ(r.status(), 200);
  EXPECT_EQ(contents(r.body_string()), kEightWords);
  EXPECT_TRUE(eventually([&] { return p.finished(); }));
}

TEST_F(Tollgate, FiftyConcurrentFuturesAllResolve) {
  auto e = engine();
  std::vector<tg::Pending> pending;
  for (int i = 0; i < 50; ++i) {
    pending.push_back(e.send_async(chat("gpt-4o", "call " + std::to_string(i)),
                                   tg::RequestOptions().with_tenant("t" + std::to_string(i % 5))));
  }
  for (auto& p : pending) {
    ASSERT_EQ(p.wait_for(kBound), std::future_status::ready);
    EXPECT_EQ(p.get().status(), 200);
  }
  EXPECT_EQ(upstream.requests(), 50u);
}

TEST_F(Tollgate, AsyncDenialArrivesThroughTheFuture) {
  auto e = engine(
      "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 1\n");
  const auto acme = tg::RequestOptions().with_tenant("acme");
  tg::Pending first = e.send_async(chat("gpt-4o", "a"), acme);
  ASSERT_EQ(first.wait_for(kBound), std::future_status::ready);
  EXPECT_EQ(first.get().status(), 200);
  tg::Pending second = e.send_async(chat("gpt-4o", "b"), acme);
  ASSERT_EQ(second.wait_for(kBound), std::future_status::ready);
  tg::Error err = expect_error([&] { (void)second.get(); });
  EXPECT_EQ(err.status(), tg::Status::Denied);
  EXPECT_EQ(err.budget(), "per-tenant");
  EXPECT_EQ(err.code(), "budget_exhausted");
  EXPECT_EQ(upstream.requests(), 1u);
}

TEST_F(Tollgate, AsyncBadInputThrowsAtOnce) {
  auto e = engine();
  EXPECT_EQ(expect_error([&] { (void)e.send_async("{not json"); }).status(),
            tg::Status::InvalidJson);
  tg::RequestOptions bad;
  bad.cache_mode = static_cast<tg::CacheMode>(7);
  EXPECT_EQ(expect_error([&] { (void)e.send_async(chat("gpt-4o", "x"), bad); }).status(),
            tg::Status::InvalidArgument);
  EXPECT_EQ(upstream.requests(), 0u);
}

// ---------------------------------------------------------------------------------------------
// Call API: streams
// ---------------------------------------------------------------------------------------------

struct Collected {
  std::mutex mutex;
  std::vector<tg::Event> events;
  int ends = 0;
  std::optional<tg::Usage> usage;
  std::optional<tg::Settlement> settlement;
  std::optional<tg::Error> error;
};

tg::Task collect(const tg::Engine& e, const std::string& request, Collected& c,
                 const tg::RequestOptions& options = {}) {
  return e.stream(
      request, options,
      [&c](const tg::Event& ev) {
        std::lock_guard<std::mutex> lock(c.mutex);
        c.events.push_back(ev);
      },
      [&c](std::optional<tg::Response> end, std::optional<tg::Error> error) {
        std::lock_guard<std::mutex> lock(c.mutex);
        ++c.ends;
        if (end) {
          c.usage = end->usage();
          c.settlement = end->settlement();
        }
        c.error = std::move(error);
      });
}

std::string stream_text(const std::vector<tg::Event>& events) {
  std::string text;
  for (const auto& ev : events) text += contents(ev.data);
  return text;
}

TEST_F(Tollgate, StreamDeliversEventsInOrderThenEndsOnce) {
  auto ids = tg::testkit::Upstream::start(R"({"event_ids": true})");
  auto e = tg::Engine::from_text("version = 1\n[[upstream]]\nname = \"ids\"\nbase_url = \"" +
                                 ids.base_url() + "\"\n");
  Collected c;
  tg::Task task = collect(e, chat("gpt-4o", "stream me"), c);
  ASSERT_EQ(task.done.wait_for(kBound), std::future_status::ready);
  task.done.get();
  EXPECT_TRUE(eventually([&] { return task.finished(); }));

  std::lock_guard<std::mutex> lock(c.mutex);
  EXPECT_EQ(c.ends, 1);
  EXPECT_FALSE(c.error.has_value());
  ASSERT_GE(c.events.size(), 3u);
  for (std::size_t i = 0; i < c.events.size(); ++i) {
    EXPECT_EQ(c.events[i].done, i + 1 == c.events.size()) << "only the last event is done";
    EXPECT_EQ(c.events[i].id, std::to_string(i + 1)) << "event ids count up from 1";
  }
  EXPECT_EQ(c.events.back().data, "[DONE]");
  EXPECT_EQ(stream_text(c.events), kEightWords);
  ASSERT_TRUE(c.usage.has_value());
  EXPECT_EQ(c.usage->completion_tokens, 8u);
  ASSERT_TRUE(c.settlement.has_value());
  EXPECT_EQ(c.settlement->tokens, c.usage->total_tokens);
}

TEST_F(Tollgate, StreamCutAfterContentIsAStreamCutError) {
  auto e = engine("[retry]\nretry_on = [\"cut_stream\", \"5xx\"]\n");
  upstream.script(R"({"actions":["cut:3"]})");
  Collected c;
  tg::Task task = collect(e, chat("gpt-4o", "cut me"), c);
  ASSERT_EQ(task.done.wait_for(kBound), std::future_status::ready);
  task.done.get();  // the handlers did not throw; the stream's error went to on_end

  std::lock_guard<std::mutex> lock(c.mutex);
  EXPECT_EQ(c.ends, 1);
  EXPECT_EQ(c.events.size(), 3u);
  for (const auto& ev : c.events) EXPECT_FALSE(ev.done);
  ASSERT_TRUE(c.error.has_value());
  EXPECT_EQ(c.error->status(), tg::Status::StreamCut);
  EXPECT_EQ(upstream.requests(), 1u) << "a stream cut after content is never retried";
}

TEST_F(Tollgate, StreamAsARange) {
  auto e = engine();
  tg::EventStream s = e.stream_events(chat("gpt-4o", "range"), {}, 2);  // a tiny queue
  std::vector<tg::Event> events;
  for (const tg::Event& ev : s) events.push_back(ev);
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.back().done);
  EXPECT_EQ(stream_text(events), kEightWords);
  EXPECT_TRUE(s.ended());
  ASSERT_NE(s.end_response(), nullptr);
  ASSERT_TRUE(s.end_response()->usage().has_value());
  EXPECT_EQ(s.end_response()->usage()->completion_tokens, 8u);
  EXPECT_TRUE(s.end_response()->body().empty());
  EXPECT_FALSE(s.next().has_value()) << "a finished range stays finished";
}

TEST_F(Tollgate, StreamRangeThrowsTheCutAfterItsEvents) {
  auto e = engine();
  upstream.script(R"({"actions":["cut:3"]})");
  tg::EventStream s = e.stream_events(chat("gpt-4o", "cut range"));
  std::size_t seen = 0;
  tg::Error err = expect_error([&] {
    for (const tg::Event& ev : s) {
      EXPECT_FALSE(ev.done);
      ++seen;
    }
  });
  EXPECT_EQ(seen, 3u);
  EXPECT_EQ(err.status(), tg::Status::StreamCut);
  EXPECT_EQ(s.end_response(), nullptr);
}

TEST_F(Tollgate, AThrowingHandlerCancelsTheStreamAndReachesTheTask) {
  auto e = engine();
  upstream.script(R"({"actions":["slow_drip:200"]})");
  std::atomic<int> events{0};
  std::atomic<int> ends{0};
  std::optional<tg::Status> end_status;
  tg::Task task = e.stream(
      chat("gpt-4o", "throw"), {},
      [&](const tg::Event&) {
        ++events;
        throw std::runtime_error("handler failed");
      },
      [&](std::optional<tg::Response>, std::optional<tg::Error> error) {
        if (error) end_status = error->status();
        ++ends;
      });
  ASSERT_EQ(task.done.wait_for(kBound), std::future_status::ready);
  EXPECT_THROW(task.done.get(), std::runtime_error);
  EXPECT_EQ(events.load(), 1) << "no event after the handler threw";
  EXPECT_EQ(ends.load(), 1);
  EXPECT_EQ(end_status, tg::Status::Cancelled);
}

// tg_task_finished: "Whether the call has ended (its final callback has fired or is firing)".
// The end handler runs inside the final callback, so the task must count as finished there.
TEST_F(Tollgate, ATaskIsFinishedWhileItsFinalCallbackFires) {
  auto e = engine();
  std::promise<const tg::Task*> handle;
  std::shared_future<const tg::Task*> task_of = handle.get_future().share();
  std::optional<bool> finished_inside;
  tg::Task task = e.stream(chat("gpt-4o", "finished?"), {}, nullptr,
                           [&](std::optional<tg::Response>, std::optional<tg::Error>) {
                             if (task_of.wait_for(kBound) != std::future_status::ready) return;
                             finished_inside = task_of.get()->finished();
                           });
  handle.set_value(&task);
  ASSERT_EQ(task.done.wait_for(kBound), std::future_status::ready);
  task.done.get();
  ASSERT_TRUE(finished_inside.has_value());
  EXPECT_TRUE(*finished_inside) << "tg_task_finished is false inside the final callback";
}

TEST_F(Tollgate, BlockingCallsInsideACallbackAreWrongThread) {
  auto e = engine();
  std::optional<tg::Status> inside;
  tg::Task task = e.stream(
      chat("gpt-4o", "inside"), {},
      [&](const tg::Event& ev) {
        if (!ev.done) return;
        try {
          (void)e.send(chat("gpt-4o", "nested"));
        } catch (const tg::Error& err) {
          inside = err.status();
        }
      },
      nullptr);
  ASSERT_EQ(task.done.wait_for(kBound), std::future_status::ready);
  task.done.get();
  EXPECT_EQ(inside, tg::Status::WrongThread);
}

// ---------------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------------

TEST_F(Tollgate, CancelEndsASlowSendPromptly) {
  auto e = engine("[[budget]]\nname = \"one\"\nconcurrency = 1\n");
  upstream.script(R"({"actions":["slow_first_byte:3000"]})");
  tg::Pending p = e.send_async(chat("gpt-4o", "slow"));
  ASSERT_TRUE(eventually([&] { return upstream.requests() >= 1; }));
  EXPECT_FALSE(p.finished());
  const auto t0 = std::chrono::steady_clock::now();
  p.cancel();
  ASSERT_EQ(p.wait_for(kBound), std::future_status::ready);
  EXPECT_LT(since(t0), 1000ms) << "cancelled well before the 3 s first byte";
  tg::Error err = expect_error([&] { (void)p.get(); });
  EXPECT_EQ(err.status(), tg::Status::Cancelled);
  EXPECT_TRUE(eventually([&] { return p.finished(); }));
  p.cancel();  // after the end: nothing happens
  // The cancelled call's concurrency slot is free again.
  EXPECT_EQ(e.send(chat("gpt-4o", "next")).status(), 200);
}

TEST_F(Tollgate, CancelEndsASlowStreamPromptly) {
  auto e = engine();
  upstream.script(R"({"actions":["slow_first_byte:3000"]})");
  Collected c;
  tg::Task task = collect(e, chat("gpt-4o", "slow stream"), c);
  ASSERT_TRUE(eventually([&] { return upstream.requests() >= 1; }));
  const auto t0 = std::chrono::steady_clock::now();
  task.cancel();
  ASSERT_EQ(task.done.wait_for(kBound), std::future_status::ready);
  EXPECT_LT(since(t0), 1000ms);
  std::lock_guard<std::mutex> lock(c.mutex);
  EXPECT_EQ(c.ends, 1);
  EXPECT_TRUE(c.events.empty());
  ASSERT_TRUE(c.error.has_value());
  EXPECT_EQ(c.error->status(), tg::Status::Cancelled);
}

TEST_F(Tollgate, DroppingAnUnfinishedRangeCancelsIt) {
  auto e = engine("[[budget]]\nname = \"one\"\nconcurrency = 1\n");
  upstream.script(R"({"actions":["slow_first_byte:3000"]})");
  {
    tg::EventStream s = e.stream_events(chat("gpt-4o", "dropped"));
    ASSERT_TRUE(eventually([&] { return upstream.requests() >= 1; }));
  }
  // The slot comes back once the cancellation went through.
  EXPECT_TRUE(eventually([&] { return e.admit(tg::Call("gpt-4o")).go(); }));
}

TEST_F(Tollgate, CancellingARangeEndsItWithCancelled) {
  auto e = engine();
  upstream.script(R"({"actions":["slow_drip:300"]})");
  tg::EventStream s = e.stream_events(chat("gpt-4o", "drip"));
  ASSERT_TRUE(s.next_for(kBound).has_value());
  const auto t0 = std::chrono::steady_clock::now();
  s.cancel();
  ASSERT_TRUE(eventually([&] { return s.ended(); }));
  EXPECT_LT(since(t0), 1000ms);
  tg::Error err = expect_error([&] {
    while (s.next()) {
    }
  });
  EXPECT_EQ(err.status(), tg::Status::Cancelled);
  EXPECT_EQ(s.end_response(), nullptr);
}

TEST_F(Tollgate, FreeingTheEngineCancelsItsCallsFirst) {
  upstream.script(R"({"actions":["slow_first_byte:3000"]})");
  tg::Pending p;
  {
    auto e = engine();
    p = e.send_async(chat("gpt-4o", "orphan"));
    ASSERT_TRUE(eventually([&] { return upstream.requests() >= 1; }));
  }  // tg_engine_free: in-flight callbacks fire with CANCELLED before it returns
  ASSERT_EQ(p.wait_for(0s), std::future_status::ready);
  EXPECT_EQ(expect_error([&] { (void)p.get(); }).status(), tg::Status::Cancelled);
}

TEST_F(Tollgate, DeadlineEndsASlowCall) {
  auto e = engine();
  upstream.script(R"({"actions":["slow_first_byte:3000"]})");
  const auto t0 = std::chrono::steady_clock::now();
  tg::Error err = expect_error(
      [&] { (void)e.send(chat("gpt-4o", "late"), tg::RequestOptions().with_deadline(200ms)); });
  EXPECT_EQ(err.status(), tg::Status::Deadline);
  EXPECT_LT(since(t0), 2500ms);
}

// ---------------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------------

TEST_F(Tollgate, ReloadCountsGenerationsAndAppliesNewLimits) {
  auto e = engine("[[budget]]\nname = \"rpm\"\nrequests_per_minute = 1\n");
  EXPECT_EQ(e.generation(), 1u);
  tg::Decision first = e.admit(tg::Call("gpt-4o"));
  ASSERT_TRUE(first.go());
  ASSERT_TRUE(e.admit(tg::Call("gpt-4o")).deny());
  EXPECT_EQ(e.reload(policy("[[budget]]\nname = \"rpm\"\nrequests_per_minute = 600\n")), 2u);
  EXPECT_EQ(e.generation(), 2u);
  EXPECT_TRUE(e.admit(tg::Call("gpt-4o")).go()) << "the new limit applies at once";

  const std::string path =
      ::testing::TempDir() + "tollgate_reload_" + std::to_string(::getpid()) + ".toml";
  {
    std::ofstream f(path);
    f << policy();
  }
  EXPECT_EQ(e.reload_file(path), 3u);
  EXPECT_EQ(e.generation(), 3u);
  tg::Engine from_file = tg::Engine::from_file(path);
  EXPECT_EQ(from_file.generation(), 1u);
  EXPECT_EQ(from_file.send(chat("gpt-4o", "from a file")).status(), 200);
  std::remove(path.c_str());
}

TEST_F(Tollgate, ARefusedReloadListsEveryProblemAndKeepsThePolicy) {
  auto e = engine(
      "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 1\n");
  tg::Error err = expect_error([&] {
    (void)e.reload(policy(
        "[[budget]]\nname = \"per-tenant\"\nrequests_per_minute = 0\n[retry]\nmax_attempts = 0\n"));
  });
  EXPECT_EQ(err.status(), tg::Status::InvalidPolicy);
  EXPECT_EQ(err.code(), "invalid_policy");
  ASSERT_EQ(err.problems().size(), 2u);
  EXPECT_NE(err.problems()[0].find("requests_per_minute"), std::string::npos);
  EXPECT_NE(err.problems()[1].find("max_attempts"), std::string::npos);
  for (const auto& p : err.problems()) {
    EXPECT_NE(std::string(err.what()).find(p), std::string::npos) << "the message lists it too";
  }
  EXPECT_EQ(e.generation(), 1u);
  // The old policy is still enforced.
  tg::Decision first = e.admit(tg::Call("gpt-4o").with_tenant("a"));
  ASSERT_TRUE(first.go());
  tg::Decision d = e.admit(tg::Call("gpt-4o").with_tenant("a"));
  ASSERT_TRUE(d.deny());
  EXPECT_EQ(d.budget, "per-tenant");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

TEST_F(Tollgate, InvalidJsonIsAnError) {
  auto e = engine();
  EXPECT_EQ(expect_error([&] { (void)e.send("{\"model\": "); }).status(), tg::Status::InvalidJson);
  EXPECT_EQ(expect_error([&] { (void)e.admit(tg::Call("gpt-4o").with_request("[1,")); })
                .status(),
            tg::Status::InvalidJson);
  EXPECT_EQ(expect_error([&] { (void)e.cache_lookup("nope"); }).status(),
            tg::Status::InvalidJson);
  EXPECT_EQ(expect_error([] { (void)tg::Engine::from_text("{ \"version\": "); }).status(),
            tg::Status::InvalidPolicy);
  EXPECT_EQ(upstream.requests(), 0u);
}

TEST_F(Tollgate, InvalidUtf8IsAnError) {
  auto e = engine();
  const std::string bad_policy = "version = 1\n# \xff\xfe\n";
  tg::Error err = expect_error([&] { (void)tg::Engine::from_text(bad_policy); });
  EXPECT_EQ(err.status(), tg::Status::InvalidUtf8);
  EXPECT_EQ(err.code(), "invalid_utf8");
  EXPECT_EQ(expect_error([&] { (void)e.send("{\"model\": \"\xc3\x28\"}"); }).status(),
            tg::Status::InvalidUtf8);
  EXPECT_EQ(expect_error([&] { (void)e.admit(tg::Call("gpt-\xff")); }).status(),
            tg::Status::InvalidUtf8);
  EXPECT_EQ(expect_error([&] { (void)e.reload(bad_policy); }).status(), tg::Status::InvalidUtf8);
  EXPECT_EQ(e.generation(), 1u);
}

TEST_F(Tollgate, AMissingFileIsIo) {
  const std::string missing = "/nonexistent/tollgate/policy.toml";
  tg::Error err = expect_error([&] { (void)tg::Engine::from_file(missing); });
  EXPECT_EQ(err.status(), tg::Status::Io);
  EXPECT_NE(std::string(err.what()).find(missing), std::string::npos);
  auto e = engine();
  EXPECT_EQ(expect_error([&] { (void)e.reload_file(missing); }).status(), tg::Status::Io);
  EXPECT_EQ(e.generation(), 1u);
}

TEST_F(Tollgate, CallErrorsHaveTheirStatuses) {
  auto e = engine();
  EXPECT_EQ(expect_error([&] { (void)e.send(R"({"messages":[]})"); }).status(),
            tg::Status::InvalidRequest);
  EXPECT_EQ(expect_error([&] {
              (void)e.send(chat("gpt-4o", "x"), tg::RequestOptions().with_route("nope"));
            }).status(),
            tg::Status::NoUpstream);
  auto bare = tg::Engine::from_text("version = 1");
  EXPECT_EQ(expect_error([&] { (void)bare.send(chat("gpt-4o", "x")); }).status(),
            tg::Status::NoUpstream);
  EXPECT_EQ(upstream.requests(), 0u);
}

TEST_F(Tollgate, APanicInsideTollgateIsAnError) {
  tg::Error err = expect_error([] { tg::testkit::panic(); });
  EXPECT_EQ(err.status(), tg::Status::Panic);
  EXPECT_EQ(err.code(), "panic");
  EXPECT_NE(std::string(err.what()).find("tg_test_panic"), std::string::npos);
  // tollgate still works afterwards.
  EXPECT_EQ(engine().send(chat("gpt-4o", "after the panic")).status(), 200);
}

TEST(Errors, ThrowIfErrorFreesAndThrows) {
  EXPECT_NO_THROW(tg::throw_if_error(TG_STATUS_OK, nullptr));
  tg_error* raw = nullptr;
  const tg_status st = tg_test_panic(&raw);
  ASSERT_NE(raw, nullptr);
  try {
    tg::throw_if_error(st, raw);  // takes ownership of raw
    FAIL() << "no throw";
  } catch (const tg::Error& e) {
    EXPECT_EQ(e.status(), tg::Status::Panic);
    tg::Error copy = e;  // copies share the details
    EXPECT_EQ(&copy.code(), &e.code());
  }
  // Without a tg_error the status still becomes an Error.
  tg::Error bare = expect_error([] { tg::throw_if_error(TG_STATUS_IO, nullptr); });
  EXPECT_EQ(bare.status(), tg::Status::Io);
  EXPECT_STREQ(bare.what(), "io");
}

// ---------------------------------------------------------------------------------------------
// Move semantics and metrics
// ---------------------------------------------------------------------------------------------

TEST_F(Tollgate, MovedFromHandlesAreEmpty) {
  tg::Engine a = engine();
  tg::Engine b = std::move(a);
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from handles are empty by design
  EXPECT_TRUE(b);
  EXPECT_EQ(a.generation(), 0u);
  EXPECT_EQ(expect_error([&] { (void)a.send(chat("gpt-4o", "x")); }).status(),
            tg::Status::NullArgument);
  EXPECT_EQ(expect_error([&] { (void)a.metrics(); }).status(), tg::Status::NullArgument);
  a = std::move(b);  // move-assign back; the empty engine is replaced, nothing freed twice
  EXPECT_TRUE(a);
  EXPECT_FALSE(b);
  a = engine();  // the old engine is freed once

  tg::Decision d = a.admit(tg::Call("gpt-4o").with_prompt_tokens(4));
  tg::Permit p = std::move(*d.permit);
  EXPECT_FALSE(*d.permit);
  EXPECT_EQ(d.permit->reserved_tokens(), 0u) << "queries on an empty handle are harmless";
  EXPECT_TRUE(p);
  tg::Permit q;
  q = std::move(p);
  EXPECT_FALSE(p);
  EXPECT_TRUE(q);

  tg::Response r = a.send(chat("gpt-4o", "moved"));
  tg::Response r2 = std::move(r);
  EXPECT_FALSE(r);
  EXPECT_EQ(r.status(), 0);
  EXPECT_TRUE(r.body().empty());
  EXPECT_EQ(r2.status(), 200);

  tg::Pending pending = a.send_async(chat("gpt-4o", "moved async"));
  tg::Pending moved = std::move(pending);
  EXPECT_FALSE(pending.future.valid());
  pending.cancel();  // empty: nothing happens
  ASSERT_EQ(moved.wait_for(kBound), std::future_status::ready);
  EXPECT_EQ(moved.get().status(), 200);

  tg::EventStream s = a.stream_events(chat("gpt-4o", "moved stream"));
  tg::EventStream s2 = std::move(s);
  EXPECT_FALSE(s);
  EXPECT_FALSE(s.next().has_value());
  std::size_t n = 0;
  for (const auto& ev : s2) n += ev.done ? 1 : 0;
  EXPECT_EQ(n, 1u);
}

TEST_F(Tollgate, AWatchReloadsAChangedFileAndReportsARefusedOne) {
  const std::string path =
      ::testing::TempDir() + "tollgate_watch_" + std::to_string(::getpid()) + ".toml";
  const auto write = [&](const std::string& text) {
    std::ofstream(path, std::ios::trunc) << text;
  };
  write(policy("[[budget]]\nname = \"w\"\nrequests_per_minute = 5\n"));
  tg::Engine e = tg::Engine::from_file(path);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<std::uint64_t, tg::Status>> seen;
  tg::Watcher w = e.watch(path, std::chrono::milliseconds(10),
                          [&](std::uint64_t generation, const tg::Error* error) {
                            std::lock_guard<std::mutex> lock(mu);
                            seen.emplace_back(generation,
                                              error ? error->status() : tg::Status::Ok);
                            cv.notify_all();
                          });
  ASSERT_TRUE(w);
  const auto wait_for = [&](std::size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(10), [&] { return seen.size() >= n; });
  };
  write(policy("[[budget]]\nname = \"w\"\nrequests_per_minute = 50\n"));
  ASSERT_TRUE(wait_for(1));
  write("version = 1\n[[budget]]\nname = \"w\"\nscope = [\"planet\"]\n");
  ASSERT_TRUE(wait_for(2));
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(seen[0], std::make_pair(std::uint64_t{2}, tg::Status::Ok));
    EXPECT_EQ(seen[1], std::make_pair(std::uint64_t{0}, tg::Status::InvalidPolicy));
  }
  EXPECT_EQ(e.generation(), 2u) << "a refused file keeps the running policy";
  w = tg::Watcher();
  std::remove(path.c_str());
  EXPECT_THROW((void)e.watch("", std::chrono::milliseconds(10)), tg::Error);
}

TEST_F(Tollgate, StatsAreJson) {
  auto e = engine("[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\n"
                  "requests_per_minute = 10\n");
  tg::Call call("gpt-4o");
  call.tenant = "acme";
  tg::Decision d = e.admit(call);
  ASSERT_TRUE(d.go());
  const std::string json = e.stats();
  EXPECT_NE(json.find("\"name\":\"per-tenant\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"keys\":1"), std::string::npos) << json;
  EXPECT_NE(json.find("\"cache\":{"), std::string::npos) << json;
}

TEST_F(Tollgate, MetricsAreTextInThePrometheusFormat) {
  auto e = engine("[cache]\nenabled = true\n");
  const std::string req = R"({"model":"gpt-4o","temperature":0,"max_tokens":8,)"
                          R"("messages":[{"role":"user","content":"m"}]})";
  EXPECT_EQ(e.send(req).source(), tg::Source::Upstream);
  tg::Response again = e.send(req);
  EXPECT_EQ(again.source(), tg::Source::Cache);
  EXPECT_EQ(again.attempts(), 0u);
  EXPECT_FALSE(again.settlement().has_value()) << "answers from the cache cost nothing";
  const std::string text = e.metrics();
  EXPECT_NE(text.find("# TYPE"), std::string::npos);
  EXPECT_NE(text.find("tollgate_call_answers_total{source=\"cache\"} 1"), std::string::npos)
      << text;
  EXPECT_EQ(upstream.requests(), 1u);
}

}  // namespace
