// tollgate.hpp: a header-only C++17 binding of tollgate's C ABI (tollgate.h).
//
// Design (after wasmtime's C++ API):
// - Every owned C handle lives in a move-only class holding a std::unique_ptr whose deleter is the
//   C free function. A moved-from object is empty (`!obj`); destroying it does nothing.
// - Errors are exceptions, not expected<>: every call that fails throws tollgate::Error, which
//   carries the C status (tollgate::Status), the message and the details of the tg_error (code,
//   budget, retry-after, HTTP status, body, policy problems). The tg_error is always freed.
//   Besides Error, only std::bad_alloc, std::future_error (misused futures) and the exceptions of
//   your own stream handlers (through Task::done) can come out of this binding.
// - Strings go to C as tg_str {data(), size()}, borrowed for the duration of the C call only.
//   Strings coming back are copied into std::string, except where a method says it returns a view
//   (Response::body(), Response::header(), Cached::body()), valid while that object lives.
// - Asynchronous calls: Engine::send_async returns a Pending holding a std::future<Response>;
//   Engine::stream calls std::function handlers; Engine::stream_events is a blocking range over
//   the events, fed through a bounded queue. Stream handlers run on one of tollgate's worker
//   threads (one call at a time per stream), and Pending's promise is fulfilled there too. They
//   must not block for long, and must not call the blocking functions (send, acquire,
//   CacheWait::join): those throw Error(Status::WrongThread) there. An exception thrown by a
//   handler never reaches tollgate: the trampoline catches it, cancels the stream and reports it
//   through the Task's `done` future.
// - Engine methods are const and thread-safe: share one Engine between threads by reference.
//   Destroy permits, tasks and streams before their engine (destroying an Engine cancels the
//   calls still running: their futures and end handlers get Error(Status::Cancelled) first).
//
// tollgate::testkit (the test upstream and tg_test_panic, for tollgate's own tests) is in
// tollgate_testkit.hpp, for a library built with the `testkit` feature; it is not shipped.

#ifndef TOLLGATE_HPP
#define TOLLGATE_HPP

#include <tollgate.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <filesystem>
#include <functional>
#include <future>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#if !defined(TOLLGATE_VERSION_MAJOR) || !defined(TOLLGATE_VERSION_MINOR) || \
    !defined(TOLLGATE_VERSION_PATCH) || !defined(TOLLGATE_VERSION)
#error "tollgate.hpp needs the tollgate.h that defines TOLLGATE_VERSION_MAJOR/MINOR/PATCH"
#endif

static_assert(TOLLGATE_VERSION_MAJOR == 0 && TOLLGATE_VERSION_MINOR == 1,
              "tollgate.hpp was written for the 0.1 C ABI; check it against this tollgate.h");

namespace tollgate {

// ---------------------------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------------------------

/// The version of the header this binding was compiled against, e.g. "0.1.0".
inline constexpr std::string_view header_version = TOLLGATE_VERSION;
inline constexpr unsigned version_major = TOLLGATE_VERSION_MAJOR;
inline constexpr unsigned version_minor = TOLLGATE_VERSION_MINOR;
inline constexpr unsigned version_patch = TOLLGATE_VERSION_PATCH;

/// The version of the linked library (tg_version), e.g. "0.1.0". Compare with header_version.
[[nodiscard]] inline std::string_view version() noexcept { return tg_version(); }

// ---------------------------------------------------------------------------------------------
// Enums mirroring the C ones (same numbers)
// ---------------------------------------------------------------------------------------------

/// What a call did: the numbers of tg_status.
enum class Status : std::uint32_t {
  Ok = TG_STATUS_OK,
  NullArgument = TG_STATUS_NULL_ARGUMENT,
  InvalidArgument = TG_STATUS_INVALID_ARGUMENT,
  InvalidUtf8 = TG_STATUS_INVALID_UTF8,
  InvalidJson = TG_STATUS_INVALID_JSON,
  InvalidPolicy = TG_STATUS_INVALID_POLICY,
  Io = TG_STATUS_IO,
  Panic = TG_STATUS_PANIC,
  WrongThread = TG_STATUS_WRONG_THREAD,
  Cancelled = TG_STATUS_CANCELLED,
  Runtime = TG_STATUS_RUNTIME,
  Timeout = TG_STATUS_TIMEOUT,
  Abandoned = TG_STATUS_ABANDONED,
  CacheRefused = TG_STATUS_CACHE_REFUSED,
  Denied = TG_STATUS_DENIED,
  GaveUp = TG_STATUS_GAVE_UP,
  Deadline = TG_STATUS_DEADLINE,
  InvalidRequest = TG_STATUS_INVALID_REQUEST,
  NoUpstream = TG_STATUS_NO_UPSTREAM,
  Auth = TG_STATUS_AUTH,
  Transport = TG_STATUS_TRANSPORT,
  Shared = TG_STATUS_SHARED,
  StreamCut = TG_STATUS_STREAM_CUT,
};

// The published numbers never change (tollgate.h); a mismatch means a header from elsewhere.
static_assert(static_cast<std::uint32_t>(Status::Ok) == 0, "tg_status numbers are stable");
static_assert(static_cast<std::uint32_t>(Status::CacheRefused) == 13, "tg_status numbers");
static_assert(static_cast<std::uint32_t>(Status::Denied) == 100, "tg_status numbers");
static_assert(static_cast<std::uint32_t>(Status::StreamCut) == 108, "tg_status numbers");

/// The short name of a status ("ok", "denied", ...; "unknown" for a number tollgate lacks).
[[nodiscard]] inline std::string_view to_string(Status status) noexcept {
  return tg_status_name(static_cast<std::uint32_t>(status));
}

enum class DecisionKind : std::uint32_t {
  Go = TG_DECISION_KIND_GO,
  Wait = TG_DECISION_KIND_WAIT,
  Deny = TG_DECISION_KIND_DENY,
};

enum class VerdictKind : std::uint32_t {
  Done = TG_VERDICT_KIND_DONE,
  Retry = TG_VERDICT_KIND_RETRY,
  GiveUp = TG_VERDICT_KIND_GIVE_UP,
};

enum class Limit : std::uint32_t {
  None = TG_LIMIT_NONE,
  RequestsPerSecond = TG_LIMIT_REQUESTS_PER_SECOND,
  RequestsPerMinute = TG_LIMIT_REQUESTS_PER_MINUTE,
  RequestsPerHour = TG_LIMIT_REQUESTS_PER_HOUR,
  RequestsPerDay = TG_LIMIT_REQUESTS_PER_DAY,
  TokensPerMinute = TG_LIMIT_TOKENS_PER_MINUTE,
  TokensPerHour = TG_LIMIT_TOKENS_PER_HOUR,
  TokensPerDay = TG_LIMIT_TOKENS_PER_DAY,
  SpendPerDay = TG_LIMIT_SPEND_PER_DAY,
  SpendPerMonth = TG_LIMIT_SPEND_PER_MONTH,
};

enum class PromptKind : std::uint32_t {
  Tokens = TG_PROMPT_KIND_TOKENS,
  Text = TG_PROMPT_KIND_TEXT,
  Request = TG_PROMPT_KIND_REQUEST,
};

enum class Failure : std::uint32_t {
  None = TG_FAILURE_NONE,
  ConnectRefused = TG_FAILURE_CONNECT_REFUSED,
  ConnectReset = TG_FAILURE_CONNECT_RESET,
  ConnectDns = TG_FAILURE_CONNECT_DNS,
  ConnectTls = TG_FAILURE_CONNECT_TLS,
  ConnectOther = TG_FAILURE_CONNECT_OTHER,
  TimeoutConnect = TG_FAILURE_TIMEOUT_CONNECT,
  TimeoutFirstByte = TG_FAILURE_TIMEOUT_FIRST_BYTE,
  TimeoutIdle = TG_FAILURE_TIMEOUT_IDLE,
  TimeoutTotal = TG_FAILURE_TIMEOUT_TOTAL,
  Malformed = TG_FAILURE_MALFORMED,
  CutStream = TG_FAILURE_CUT_STREAM,
};

enum class Source : std::uint32_t {
  Upstream = TG_SOURCE_UPSTREAM,
  Cache = TG_SOURCE_CACHE,
  Shared = TG_SOURCE_SHARED,
  Stale = TG_SOURCE_STALE,
};

enum class CacheMode : std::uint32_t {
  Default = TG_CACHE_MODE_DEFAULT,
  Force = TG_CACHE_MODE_FORCE,
  Bypass = TG_CACHE_MODE_BYPASS,
};

enum class CacheKind : std::uint32_t {
  Hit = TG_CACHE_KIND_HIT,
  Miss = TG_CACHE_KIND_MISS,
  Joined = TG_CACHE_KIND_JOINED,
  NotCacheable = TG_CACHE_KIND_NOT_CACHEABLE,
};

// ---------------------------------------------------------------------------------------------
// Internals: owning pointers and string conversions
// ---------------------------------------------------------------------------------------------

namespace detail {

/// A deleter calling the C free function (every tg_*_free accepts NULL).
template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const noexcept { Free(p); }
};

template <typename T, void (*Free)(T*)>
using Owned = std::unique_ptr<T, Deleter<T, Free>>;

using ErrorPtr = Owned<tg_error, tg_error_free>;
using EnginePtr = Owned<tg_engine, tg_engine_free>;
using PermitPtr = Owned<tg_permit, tg_permit_free>;
using AttemptPtr = Owned<tg_attempt, tg_attempt_free>;
using ResponsePtr = Owned<tg_response, tg_response_free>;
using TaskPtr = Owned<tg_task, tg_task_free>;
using BytesPtr = Owned<tg_bytes, tg_bytes_free>;
using CachedPtr = Owned<tg_cached, tg_cached_free>;
using FillPtr = Owned<tg_cache_fill, tg_cache_fill_free>;
using WaitPtr = Owned<tg_cache_wait, tg_cache_wait_free>;
using WatcherPtr = Owned<tg_watcher, tg_watcher_free>;
using ChunksPtr = Owned<tg_chunks, tg_chunks_free>;

/// A borrowed view of `s` for one C call.
inline tg_str str(std::string_view s) noexcept { return tg_str{s.data(), s.size()}; }

inline const std::uint8_t* bytes(std::string_view s) noexcept {
  return reinterpret_cast<const std::uint8_t*>(s.data());
}

/// A view of a string tollgate returned (NULL with length 0 is the empty string).
inline std::string_view view(tg_str s) noexcept {
  return (s.ptr == nullptr || s.len == 0) ? std::string_view() : std::string_view(s.ptr, s.len);
}

inline std::string copy(tg_str s) { return std::string(view(s)); }

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A failed call: thrown by every binding function that fails (the binding uses exceptions, not
/// an expected<> type). Copies are cheap and never throw (the details are shared).
class Error : public std::runtime_error {
 public:
  /// Copies the details of a tg_error (which stays owned by the caller; see throw_if_error).
  explicit Error(const tg_error* err)
      : std::runtime_error(tg_error_message(err)), details_(std::make_shared<Details>()) {
    details_->status = static_cast<Status>(tg_error_status(err));
    details_->code = detail::copy(tg_error_code(err));
    details_->budget = detail::copy(tg_error_budget(err));
    std::uint64_t ns = 0;
    if (tg_error_retry_after(err, &ns)) {
      details_->retry_after = std::chrono::nanoseconds(static_cast<std::int64_t>(ns));
    }
    details_->http_status = tg_error_http_status(err);
    details_->body = detail::copy(tg_error_body(err));
    const std::size_t n = tg_error_problem_count(err);
    details_->problems.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      details_->problems.push_back(detail::copy(tg_error_problem(err, i)));
    }
  }

  /// An error raised by the binding itself (no tg_error); the code is the status's name.
  Error(Status status, const std::string& message)
      : std::runtime_error(message), details_(std::make_shared<Details>()) {
    details_->status = status;
    details_->code = std::string(to_string(status));
  }

  /// The status (the tg_status number).
  [[nodiscard]] Status status() const noexcept { return details_->status; }
  /// A stable code finer than the status: "budget_exhausted", "attempts_exhausted", ...
  [[nodiscard]] const std::string& code() const noexcept { return details_->code; }
  /// The budget that decided a denial; empty otherwise.
  [[nodiscard]] const std::string& budget() const noexcept { return details_->budget; }
  /// When the same call could pass again, for a denial that knows it.
  [[nodiscard]] std::optional<std::chrono::nanoseconds> retry_after() const noexcept {
    return details_->retry_after;
  }
  /// For Status::GaveUp: the HTTP status of the last answer (0 when none came).
  [[nodiscard]] std::uint16_t http_status() const noexcept { return details_->http_status; }
  /// For Status::GaveUp: the body of the last answer (the upstream's error JSON).
  [[nodiscard]] const std::string& body() const noexcept { return details_->body; }
  /// For Status::InvalidPolicy: every problem of the refused policy, one per entry.
  [[nodiscard]] const std::vector<std::string>& problems() const noexcept {
    return details_->problems;
  }

 private:
  struct Details {
    Status status = Status::Ok;
    std::string code;
    std::string budget;
    std::optional<std::chrono::nanoseconds> retry_after;
    std::uint16_t http_status = 0;
    std::string body;
    std::vector<std::string> problems;
  };
  std::shared_ptr<Details> details_;
};

/// Takes ownership of `err` (which may be NULL) and frees it in every case; when `status` is not
/// TG_STATUS_OK, throws the Error it describes.
inline void throw_if_error(tg_status status, tg_error* err) {
  detail::ErrorPtr owned(err);
  if (status == TG_STATUS_OK) {
    return;
  }
  if (owned) {
    throw Error(owned.get());
  }
  throw Error(static_cast<Status>(status), tg_status_name(static_cast<std::uint32_t>(status)));
}

/// Takes ownership of a non-NULL `err`, frees it, and returns it as an Error.
[[nodiscard]] inline Error take_error(tg_error* err) {
  detail::ErrorPtr owned(err);
  return Error(owned.get());
}

// ---------------------------------------------------------------------------------------------
// Plain values
// ---------------------------------------------------------------------------------------------

/// Token usage as the upstream reported it.
struct Usage {
  std::uint64_t prompt_tokens = 0;
  std::uint64_t completion_tokens = 0;
  std::uint64_t total_tokens = 0;
  std::uint64_t cached_prompt_tokens = 0;
  std::uint64_t reasoning_tokens = 0;

  [[nodiscard]] static Usage from_c(const tg_usage& u) noexcept {
    return Usage{u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_prompt_tokens,
                 u.reasoning_tokens};
  }
  [[nodiscard]] tg_usage to_c() const noexcept {
    return tg_usage{prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens,
                    reasoning_tokens};
  }
};

/// The cost of an attempt, by part (in the price table's currency).
struct Cost {
  double input = 0;
  double cached_input = 0;
  double output = 0;
};

/// What a settled attempt (or a call of the call API) was charged.
struct Settlement {
  std::uint64_t reserved_tokens = 0;
  std::uint64_t tokens = 0;
  std::optional<Usage> usage;
  std::optional<Cost> cost;
  double spend = 0;

  [[nodiscard]] static Settlement from_c(const tg_settlement& s) {
    Settlement out;
    out.reserved_tokens = s.reserved_tokens;
    out.tokens = s.tokens;
    if (s.has_usage) out.usage = Usage::from_c(s.usage);
    if (s.has_cost) out.cost = Cost{s.cost_input, s.cost_cached_input, s.cost_output};
    out.spend = s.spend;
    return out;
  }
};

/// Where an attempt goes (copied out of the handle it was read from).
struct Target {
  std::string route;
  std::string upstream;
  std::string model;
  std::string key;

  [[nodiscard]] static Target from_c(const tg_target& t) {
    return Target{detail::copy(t.route), detail::copy(t.upstream), detail::copy(t.model),
                  detail::copy(t.key)};
  }
};

/// One earlier attempt of a call that was retried.
struct AttemptRecord {
  std::uint32_t number = 0;
  std::string outcome;   // "status_503", "timeout_first_byte", ...
  std::string decision;  // in words
  std::optional<Target> target;
};

/// One event of a streamed answer, copied out of the callback so it outlives it.
struct Event {
  std::string event;  // the SSE `event:` field; empty for the default
  std::string data;   // a chat.completion.chunk JSON, or "[DONE]"
  std::string id;     // the last SSE `id:`; empty when none
  bool done = false;  // the `data: [DONE]` marker, the last event of a complete stream

  [[nodiscard]] static Event from_c(const tg_event& e) {
    return Event{detail::copy(e.event), detail::copy(e.data), detail::copy(e.id), e.done};
  }
};

// ---------------------------------------------------------------------------------------------
// Decide API handles
// ---------------------------------------------------------------------------------------------

/// The state a retried call carries to its next admission. Move-only; freed with tg_attempt_free.
class Attempt {
 public:
  Attempt() noexcept = default;
  explicit Attempt(tg_attempt* raw) noexcept : ptr_(raw) {}

  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  [[nodiscard]] const tg_attempt* get() const noexcept { return ptr_.get(); }
  [[nodiscard]] tg_attempt* release() noexcept { return ptr_.release(); }

  /// The number of the attempt this state is for (2 for the first retry); 0 when empty.
  [[nodiscard]] std::uint32_t number() const noexcept { return tg_attempt_number(ptr_.get()); }
  /// Where the retry should go, when the engine chose a target.
  [[nodiscard]] std::optional<Target> target() const {
    tg_target t{};
    if (!tg_attempt_target(ptr_.get(), &t)) return std::nullopt;
    return Target::from_c(t);
  }

 private:
  detail::AttemptPtr ptr_;
};

/// An admitted call's hold on its budgets. Move-only. Settle it with Engine::settle; destroying it
/// unsettled releases the slot and refunds the reservations (tg_permit_free).
class Permit {
 public:
  Permit() noexcept = default;
  explicit Permit(tg_permit* raw) noexcept : ptr_(raw) {}

  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  [[nodiscard]] const tg_permit* get() const noexcept { return ptr_.get(); }
  [[nodiscard]] tg_permit* release() noexcept { return ptr_.release(); }

  [[nodiscard]] std::uint64_t prompt_tokens() const noexcept {
    return tg_permit_prompt_tokens(ptr_.get());
  }
  [[nodiscard]] std::uint64_t reserved_tokens() const noexcept {
    return tg_permit_reserved_tokens(ptr_.get());
  }
  [[nodiscard]] double estimated_cost() const noexcept {
    return tg_permit_estimated_cost(ptr_.get());
  }
  /// Where the admitted attempt should go, when the policy routed the call.
  [[nodiscard]] std::optional<Target> target() const {
    tg_target t{};
    if (!tg_permit_target(ptr_.get(), &t)) return std::nullopt;
    return Target::from_c(t);
  }

 private:
  detail::PermitPtr ptr_;
};

/// One call to admit. Strings are owned here and lent to C only for the admit/acquire call.
struct Call {
  std::string model;
  std::string tenant;
  std::string upstream;
  std::string key;
  std::string route;
  std::int16_t priority = 0;
  PromptKind prompt_kind = PromptKind::Tokens;
  std::uint64_t prompt_tokens = 0;  // PromptKind::Tokens
  std::string prompt;               // PromptKind::Text: the text; PromptKind::Request: the JSON
  std::optional<std::uint64_t> max_tokens;
  std::chrono::milliseconds deadline{0};  // 0: none
  const Attempt* attempt = nullptr;       // borrowed; must outlive the admit call

  Call() = default;
  explicit Call(std::string model_name) : model(std::move(model_name)) {}

  Call& with_tenant(std::string v) { tenant = std::move(v); return *this; }
  Call& with_upstream(std::string v) { upstream = std::move(v); return *this; }
  Call& with_key(std::string v) { key = std::move(v); return *this; }
  Call& with_route(std::string v) { route = std::move(v); return *this; }
  Call& with_priority(std::int16_t v) { priority = v; return *this; }
  Call& with_prompt_tokens(std::uint64_t n) {
    prompt_kind = PromptKind::Tokens;
    prompt_tokens = n;
    return *this;
  }
  Call& with_prompt_text(std::string text) {
    prompt_kind = PromptKind::Text;
    prompt = std::move(text);
    return *this;
  }
  Call& with_request(std::string json) {
    prompt_kind = PromptKind::Request;
    prompt = std::move(json);
    return *this;
  }
  Call& with_max_tokens(std::uint64_t n) { max_tokens = n; return *this; }
  Call& with_deadline(std::chrono::milliseconds d) { deadline = d; return *this; }
  /// For a retry: the Attempt of the previous Retry verdict (borrowed, not copied).
  Call& with_attempt(const Attempt& a) { attempt = &a; return *this; }

  /// The C view of this call: valid while this Call (and its Attempt) lives unchanged.
  [[nodiscard]] tg_call to_c() const noexcept {
    tg_call c{};
    c.tenant = detail::str(tenant);
    c.model = detail::str(model);
    c.upstream = detail::str(upstream);
    c.key = detail::str(key);
    c.route = detail::str(route);
    c.priority = priority;
    c.prompt_kind = static_cast<std::uint32_t>(prompt_kind);
    c.prompt_tokens = prompt_tokens;
    c.prompt = detail::str(prompt);
    c.has_max_tokens = max_tokens.has_value();
    c.max_tokens = max_tokens.value_or(0);
    c.deadline_ms = deadline.count() > 0 ? static_cast<std::uint64_t>(deadline.count()) : 0;
    c.attempt = attempt != nullptr ? attempt->get() : nullptr;
    return c;
  }
};

/// The answer of Engine::admit. Move-only (it may hold a Permit).
struct Decision {
  DecisionKind kind = DecisionKind::Deny;
  std::optional<Permit> permit;      // Go
  std::chrono::nanoseconds after{0};  // Wait: admit again after this; Deny: could pass after (or 0)
  std::string budget;                // Wait, Deny: the deciding budget (empty when none)
  Limit limit = Limit::None;         // Wait, Deny: the limit without room
  std::optional<Error> denial;       // Deny: status Denied, code "budget_exhausted", ...

  [[nodiscard]] bool go() const noexcept { return kind == DecisionKind::Go; }
  [[nodiscard]] bool wait() const noexcept { return kind == DecisionKind::Wait; }
  [[nodiscard]] bool deny() const noexcept { return kind == DecisionKind::Deny; }
};

/// What happened to an admitted attempt, for Engine::settle. Default: not sent (full refund).
struct Outcome {
  bool sent = false;
  std::uint16_t status = 0;  // HTTP status; 0 when no response head arrived
  std::optional<Usage> usage;
  std::chrono::nanoseconds latency{0};
  Failure failure = Failure::None;
  std::vector<std::pair<std::string, std::string>> headers;  // Retry-After, x-ratelimit-*, ...
  bool content_delivered = false;  // a stream whose content reached the caller: never retried

  /// A response arrived with this HTTP status.
  [[nodiscard]] static Outcome http(std::uint16_t code, std::optional<Usage> u = std::nullopt) {
    Outcome o;
    o.sent = true;
    o.status = code;
    o.usage = u;
    return o;
  }
  /// The attempt was sent but ended by a transport failure.
  [[nodiscard]] static Outcome failed(Failure f) {
    Outcome o;
    o.sent = true;
    o.failure = f;
    return o;
  }
};

/// The answer of Engine::settle. Move-only (it may hold an Attempt).
struct Verdict {
  VerdictKind kind = VerdictKind::Done;
  Settlement settlement;                    // every kind
  std::chrono::nanoseconds retry_after{0};  // Retry
  std::optional<Attempt> attempt;           // Retry: put in Call::with_attempt for the re-admit
  std::optional<Error> give_up;             // GiveUp: status GaveUp, code "attempts_exhausted", ...

  [[nodiscard]] bool done() const noexcept { return kind == VerdictKind::Done; }
  [[nodiscard]] bool retry() const noexcept { return kind == VerdictKind::Retry; }
  [[nodiscard]] bool gave_up() const noexcept { return kind == VerdictKind::GiveUp; }
};

// ---------------------------------------------------------------------------------------------
// Cache API handles
// ---------------------------------------------------------------------------------------------

/// A cached answer. Move-only.
class Cached {
 public:
  Cached() noexcept = default;
  explicit Cached(tg_cached* raw) noexcept : ptr_(raw) {}
  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  [[nodiscard]] const tg_cached* get() const noexcept { return ptr_.get(); }

  [[nodiscard]] std::uint16_t status() const noexcept { return tg_cached_status(ptr_.get()); }
  /// The JSON body; a view valid while this Cached lives.
  [[nodiscard]] std::string_view body() const noexcept {
    return detail::view(tg_cached_body(ptr_.get()));
  }
  [[nodiscard]] std::optional<Usage> usage() const noexcept {
    tg_usage u{};
    if (!tg_cached_usage(ptr_.get(), &u)) return std::nullopt;
    return Usage::from_c(u);
  }

 private:
  detail::CachedPtr ptr_;
};

/// The duty to fill a cache entry after a Miss: pass it to Engine::cache_store or
/// Engine::cache_fail. Destroying it unfinished tells the waiters the fetch was abandoned.
class CacheFill {
 public:
  CacheFill() noexcept = default;
  explicit CacheFill(tg_cache_fill* raw) noexcept : ptr_(raw) {}
  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  [[nodiscard]] tg_cache_fill* release() noexcept { return ptr_.release(); }

 private:
  detail::FillPtr ptr_;
};

/// A wait for an identical request in flight. Move-only.
class CacheWait {
 public:
  CacheWait() noexcept = default;
  explicit CacheWait(tg_cache_wait* raw) noexcept : ptr_(raw) {}
  explicit operator bool() const noexcept { return ptr_ != nullptr; }

  /// Waits (blocks) up to `timeout` (0: no limit) for the answer. Throws Error with Status::Timeout
  /// (waiting again is allowed), Status::Abandoned (look the request up again) or Status::Shared.
  [[nodiscard]] Cached join(std::chrono::milliseconds timeout = std::chrono::milliseconds{}) const {
    tg_cached* out = nullptr;
    tg_error* err = nullptr;
    const auto ms = timeout.count() > 0 ? static_cast<std::uint64_t>(timeout.count()) : 0;
    const tg_status st = tg_cache_wait_join(ptr_.get(), ms, &out, &err);
    throw_if_error(st, err);
    return Cached(out);
  }

 private:
  detail::WaitPtr ptr_;
};

/// The answer of Engine::cache_lookup: exactly the member of its kind is set.
struct CacheLookup {
  CacheKind kind = CacheKind::NotCacheable;
  std::optional<Cached> hit;
  std::optional<CacheFill> fill;
  std::optional<CacheWait> joined;
  std::string reason;  // NotCacheable: "disabled", "temperature", ...
};

// ---------------------------------------------------------------------------------------------
// Call API
// ---------------------------------------------------------------------------------------------

/// Who makes a request and how (all optional).
struct RequestOptions {
  std::string tenant;
  std::string route;
  std::string upstream;
  std::int16_t priority = 0;
  std::chrono::milliseconds deadline{0};  // 0: none beyond the upstream's timeouts
  CacheMode cache_mode = CacheMode::Default;

  RequestOptions& with_tenant(std::string v) { tenant = std::move(v); return *this; }
  RequestOptions& with_route(std::string v) { route = std::move(v); return *this; }
  RequestOptions& with_upstream(std::string v) { upstream = std::move(v); return *this; }
  RequestOptions& with_priority(std::int16_t v) { priority = v; return *this; }
  RequestOptions& with_deadline(std::chrono::milliseconds d) { deadline = d; return *this; }
  RequestOptions& with_cache_mode(CacheMode m) { cache_mode = m; return *this; }

  /// The C view: valid while these options live unchanged.
  [[nodiscard]] tg_request_options to_c() const noexcept {
    tg_request_options o{};
    o.tenant = detail::str(tenant);
    o.route = detail::str(route);
    o.upstream = detail::str(upstream);
    o.priority = priority;
    o.deadline_ms = deadline.count() > 0 ? static_cast<std::uint64_t>(deadline.count()) : 0;
    o.cache_mode = static_cast<std::uint32_t>(cache_mode);
    return o;
  }
};

/// An answer of the call API. Move-only. For a stream's end, the body is empty.
class Response {
 public:
  Response() noexcept = default;
  explicit Response(tg_response* raw) noexcept : ptr_(raw) {}

  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  [[nodiscard]] const tg_response* get() const noexcept { return ptr_.get(); }

  [[nodiscard]] std::uint16_t status() const noexcept { return tg_response_status(ptr_.get()); }
  /// The upstream's JSON body; a view valid while this Response lives.
  [[nodiscard]] std::string_view body() const noexcept {
    return detail::view(tg_response_body(ptr_.get()));
  }
  /// The body, copied.
  [[nodiscard]] std::string body_string() const { return std::string(body()); }
  [[nodiscard]] Source source() const noexcept {
    return static_cast<Source>(tg_response_source(ptr_.get()));
  }
  /// Attempts made (0 for answers from the cache or an identical call).
  [[nodiscard]] std::uint32_t attempts() const noexcept {
    return tg_response_attempts(ptr_.get());
  }
  /// Time spent waiting for budget room, over every attempt.
  [[nodiscard]] std::chrono::nanoseconds queued() const noexcept {
    return std::chrono::nanoseconds(static_cast<std::int64_t>(tg_response_queued_ns(ptr_.get())));
  }
  [[nodiscard]] std::optional<Usage> usage() const noexcept {
    tg_usage u{};
    if (!tg_response_usage(ptr_.get(), &u)) return std::nullopt;
    return Usage::from_c(u);
  }
  /// What the call was charged (none for answers from the cache).
  [[nodiscard]] std::optional<Settlement> settlement() const {
    tg_settlement s{};
    if (!tg_response_settlement(ptr_.get(), &s)) return std::nullopt;
    return Settlement::from_c(s);
  }
  [[nodiscard]] std::optional<Target> target() const {
    tg_target t{};
    if (!tg_response_target(ptr_.get(), &t)) return std::nullopt;
    return Target::from_c(t);
  }
  /// The first value of a header (any case); a view valid while this Response lives.
  [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const noexcept {
    tg_str v{};
    if (!tg_response_header(ptr_.get(), name.data(), name.size(), &v)) return std::nullopt;
    return detail::view(v);
  }
  /// The earlier attempts that failed and were retried, oldest first.
  [[nodiscard]] std::vector<AttemptRecord> history() const {
    std::vector<AttemptRecord> out;
    const std::size_t n = tg_response_history_len(ptr_.get());
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      tg_attempt_record r{};
      if (!tg_response_history(ptr_.get(), i, &r)) break;
      AttemptRecord rec;
      rec.number = r.number;
      rec.outcome = detail::copy(r.outcome);
      rec.decision = detail::copy(r.decision);
      if (r.has_target) rec.target = Target::from_c(r.target);
      out.push_back(std::move(rec));
    }
    return out;
  }

 private:
  detail::ResponsePtr ptr_;
};

namespace detail {

/// A task handle shared by the object returned to the caller and, for streams, the trampoline.
struct SharedTask {
  TaskPtr task;
  void cancel() const noexcept { tg_task_cancel(task.get()); }
  bool finished() const noexcept { return tg_task_finished(task.get()); }
};

/// State of send_async: owned by the callback, which deletes it in its one call.
struct SendState {
  std::promise<Response> promise;
};

inline void set_exception_quietly(std::promise<Response>& p, std::exception_ptr e) noexcept {
  try {
    p.set_exception(std::move(e));
  } catch (...) {  // already satisfied: nothing to report to
  }
}

/// The tg_send_callback of send_async: runs once on a tollgate worker, never unwinds.
inline void send_trampoline(void* user_data, tg_response* response, tg_error* error) noexcept {
  std::unique_ptr<SendState> state(static_cast<SendState*>(user_data));
  ResponsePtr owned_response(response);
  ErrorPtr owned_error(error);
  try {
    if (owned_error) {
      state->promise.set_exception(std::make_exception_ptr(Error(owned_error.get())));
    } else if (owned_response) {
      state->promise.set_value(Response(owned_response.release()));
    } else {
      state->promise.set_exception(std::make_exception_ptr(
          Error(Status::Panic, "tollgate called back with neither a response nor an error")));
    }
  } catch (...) {
    set_exception_quietly(state->promise, std::current_exception());
  }
}

}  // namespace detail

/// A send running on tollgate's workers (Engine::send_async). Move-only.
///
/// `future` resolves with the Response, or throws the Error (Status::Cancelled after cancel()).
/// Destroying a Pending does not cancel the call (as tg_task_free): call cancel() for that.
class Pending {
 public:
  Pending() noexcept = default;
  Pending(std::future<Response> f, detail::TaskPtr task) noexcept
      : future(std::move(f)), task_(std::move(task)) {}

  std::future<Response> future;

  /// Cancels the call: the future then throws Error(Status::Cancelled), unless it had ended.
  /// Any thread; does nothing on an empty Pending.
  void cancel() const noexcept { tg_task_cancel(task_.get()); }
  /// Whether the call has ended (its callback has fired or is firing).
  [[nodiscard]] bool finished() const noexcept { return tg_task_finished(task_.get()); }
  /// future.get(): the Response, or throws the Error.
  [[nodiscard]] Response get() { return future.get(); }
  template <typename Rep, typename Period>
  [[nodiscard]] std::future_status wait_for(const std::chrono::duration<Rep, Period>& d) const {
    return future.wait_for(d);
  }

 private:
  detail::TaskPtr task_;
};

using EventHandler = std::function<void(const Event& event)>;
/// Called once at the end of a stream: with the final response (status, usage, settlement; empty
/// body) and no error, or with no response and the error (Status::StreamCut, Cancelled, ...).
using EndHandler = std::function<void(std::optional<Response> end, std::optional<Error> error)>;

namespace detail {

/// State of a callback stream, shared by the trampoline (via a heap shared_ptr deleted in the
/// final call) and the thread that started it.
struct StreamState {
  EventHandler on_event;
  EndHandler on_end;
  std::promise<void> done;
  std::exception_ptr failure;  // the first exception a handler threw
  std::mutex mutex;
  std::shared_ptr<SharedTask> task;  // set by the starting thread after tg_engine_stream returns
  bool cancel_requested = false;     // a handler threw before `task` was set

  void cancel_after_failure() noexcept {
    std::lock_guard<std::mutex> lock(mutex);
    if (task) {
      task->cancel();
    } else {
      cancel_requested = true;
    }
  }
};

inline void stream_trampoline(void* user_data, const tg_event* event, tg_response* end,
                              tg_error* error) noexcept {
  auto* holder = static_cast<std::shared_ptr<StreamState>*>(user_data);
  StreamState& s = **holder;
  if (event != nullptr) {
    if (s.failure) return;  // a handler threw: the call is being cancelled
    try {
      if (s.on_event) s.on_event(Event::from_c(*event));
    } catch (...) {
      s.failure = std::current_exception();
      s.cancel_after_failure();
    }
    return;
  }
  // The final call: take ownership, then drop the trampoline's share of the state.
  std::unique_ptr<std::shared_ptr<StreamState>> own(holder);
  ResponsePtr owned_end(end);
  ErrorPtr owned_error(error);
  try {
    std::optional<Response> r;
    std::optional<Error> e;
    if (owned_error) {
      e.emplace(owned_error.get());
    } else if (owned_end) {
      r.emplace(owned_end.release());
    } else {
      e.emplace(Status::Panic, "tollgate ended a stream with neither a response nor an error");
    }
    if (s.on_end) s.on_end(std::move(r), std::move(e));
  } catch (...) {
    if (!s.failure) s.failure = std::current_exception();
  }
  try {
    if (s.failure) {
      s.done.set_exception(s.failure);
    } else {
      s.done.set_value();
    }
  } catch (...) {  // already satisfied
  }
}

}  // namespace detail

/// A stream running on tollgate's workers (Engine::stream). Move-only.
///
/// `done` becomes ready after the end handler has returned. It holds an exception when a handler
/// threw (the first one): the trampoline catches it, stops delivering events and cancels the
/// call (the end handler then sees Error(Status::Cancelled)). Destroying a Task does not cancel.
class Task {
 public:
  Task() noexcept = default;
  Task(std::future<void> d, std::shared_ptr<detail::SharedTask> task) noexcept
      : done(std::move(d)), task_(std::move(task)) {}

  std::future<void> done;

  /// Cancels the stream: the end handler gets Error(Status::Cancelled), unless it had ended.
  void cancel() const noexcept {
    if (task_) task_->cancel();
  }
  /// Whether the stream has ended (its final callback has fired or is firing).
  [[nodiscard]] bool finished() const noexcept { return !task_ || task_->finished(); }

 private:
  std::shared_ptr<detail::SharedTask> task_;
};

namespace detail {

/// State of an EventStream: a bounded queue between the worker (producer) and the consumer.
struct QueueState {
  explicit QueueState(std::size_t cap) : capacity(cap == 0 ? 1 : cap) {}
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<Event> events;
  std::size_t capacity;
  bool closed = false;  // the consumer is gone: drop events, never block
  bool ended = false;   // the final callback has fired
  std::optional<Response> end;
  std::optional<Error> error;

  /// Stops queueing: later events are dropped and the producer never waits again. Returns
  /// whether the stream had already ended.
  bool close() noexcept {
    bool was_ended = true;
    try {
      std::lock_guard<std::mutex> lock(mutex);
      closed = true;
      was_ended = ended;
    } catch (...) {  // std::mutex::lock failing (system_error): nothing sensible to do
    }
    cv.notify_all();
    return was_ended;
  }
};

inline void queue_trampoline(void* user_data, const tg_event* event, tg_response* end,
                             tg_error* error) noexcept {
  auto* holder = static_cast<std::shared_ptr<QueueState>*>(user_data);
  QueueState& q = **holder;
  if (event != nullptr) {
    try {
      Event copy = Event::from_c(*event);
      std::unique_lock<std::mutex> lock(q.mutex);
      // Backpressure: a full queue pauses this stream (only this stream's worker waits).
      q.cv.wait(lock, [&] { return q.closed || q.events.size() < q.capacity; });
      if (!q.closed) q.events.push_back(std::move(copy));
      lock.unlock();
      q.cv.notify_all();
    } catch (...) {  // out of memory copying the event: the event is lost, the stream goes on
    }
    return;
  }
  std::unique_ptr<std::shared_ptr<QueueState>> own(holder);
  ResponsePtr owned_end(end);
  ErrorPtr owned_error(error);
  {
    std::lock_guard<std::mutex> lock(q.mutex);
    try {
      if (owned_error) {
        q.error.emplace(owned_error.get());
      } else if (owned_end) {
        q.end.emplace(owned_end.release());
      } else {
        q.error.emplace(Status::Panic, "tollgate ended a stream with no response and no error");
      }
    } catch (...) {
      // Out of memory building the error: report it as a cancellation without details.
      q.error.reset();
    }
    q.ended = true;
  }
  q.cv.notify_all();
}

}  // namespace detail

/// A stream read as a blocking range (Engine::stream_events). Move-only.
///
///   for (const tollgate::Event& e : engine.stream_events(request)) { ... }
///
/// Events are copied into a bounded queue by tollgate's worker; when the queue is full the stream
/// pauses until the consumer catches up. Iteration ends after the last event of a complete stream
/// (the `done` one); when the stream failed, the iterator increment (or next()) throws the Error
/// after the events that arrived. Consume it on your own thread, not in a tollgate callback.
/// Destroying an unfinished EventStream cancels the call.
class EventStream {
 public:
  EventStream() noexcept = default;
  EventStream(std::shared_ptr<detail::QueueState> state, detail::TaskPtr task) noexcept
      : state_(std::move(state)), task_(std::move(task)) {}
  EventStream(EventStream&&) noexcept = default;
  EventStream& operator=(EventStream&& other) noexcept {
    if (this != &other) {
      close();
      state_ = std::move(other.state_);
      task_ = std::move(other.task_);
    }
    return *this;
  }
  EventStream(const EventStream&) = delete;
  EventStream& operator=(const EventStream&) = delete;
  ~EventStream() { close(); }

  explicit operator bool() const noexcept { return state_ != nullptr; }

  /// The next event (blocks until one arrives); nullopt once the stream completed. Throws the
  /// stream's Error (Status::StreamCut, Cancelled, ...) once its events are consumed.
  [[nodiscard]] std::optional<Event> next() {
    if (!state_) return std::nullopt;
    std::unique_lock<std::mutex> lock(state_->mutex);
    state_->cv.wait(lock, [&] { return !state_->events.empty() || state_->ended; });
    if (!state_->events.empty()) {
      Event e = std::move(state_->events.front());
      state_->events.pop_front();
      lock.unlock();
      state_->cv.notify_all();
      return e;
    }
    if (state_->error) throw *state_->error;
    if (!state_->end) throw Error(Status::Cancelled, "the stream ended without an answer");
    return std::nullopt;
  }

  /// next() with a time limit: nullopt also when nothing arrived within `timeout` (then check
  /// ended()).
  template <typename Rep, typename Period>
  [[nodiscard]] std::optional<Event> next_for(const std::chrono::duration<Rep, Period>& timeout) {
    if (!state_) return std::nullopt;
    {
      std::unique_lock<std::mutex> lock(state_->mutex);
      if (!state_->cv.wait_for(lock, timeout,
                               [&] { return !state_->events.empty() || state_->ended; })) {
        return std::nullopt;
      }
    }
    return next();
  }

  /// Whether the final callback has fired (events may still be queued).
  [[nodiscard]] bool ended() const {
    if (!state_) return true;
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->ended;
  }

  /// The final response (status, usage, settlement) once the stream completed; else nullptr.
  /// Valid while this EventStream lives.
  [[nodiscard]] const Response* end_response() const {
    if (!state_) return nullptr;
    std::lock_guard<std::mutex> lock(state_->mutex);
    return (state_->ended && state_->end) ? &*state_->end : nullptr;
  }

  /// Cancels the call: events already queued can still be read, later ones are dropped, and the
  /// range then ends with Error(Status::Cancelled) (unless the stream had already ended).
  void cancel() const noexcept {
    if (!state_) return;
    state_->close();
    tg_task_cancel(task_.get());
  }

  /// An input iterator over the events; equal to end() after the last one.
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Event;
    using difference_type = std::ptrdiff_t;
    using pointer = const Event*;
    using reference = const Event&;

    iterator() noexcept = default;
    explicit iterator(EventStream* s) : stream_(s) { advance(); }
    reference operator*() const noexcept { return *current_; }
    pointer operator->() const noexcept { return &*current_; }
    iterator& operator++() {
      advance();
      return *this;
    }
    bool operator==(const iterator& o) const noexcept { return stream_ == o.stream_; }
    bool operator!=(const iterator& o) const noexcept { return !(*this == o); }

   private:
    void advance() {
      current_ = stream_->next();
      if (!current_) stream_ = nullptr;
    }
    EventStream* stream_ = nullptr;
    std::optional<Event> current_;
  };

  [[nodiscard]] iterator begin() { return iterator(this); }
  [[nodiscard]] iterator end() noexcept { return iterator(); }

 private:
  void close() noexcept {
    if (!state_) return;
    if (!state_->close()) tg_task_cancel(task_.get());
    task_.reset();
    state_.reset();
  }

  std::shared_ptr<detail::QueueState> state_;
  detail::TaskPtr task_;
};

// ---------------------------------------------------------------------------------------------
// Watcher
// ---------------------------------------------------------------------------------------------

/// Hears a policy watch: after an accepted reload, `generation` is the new policy's and `error`
/// is null; after a refused or unreadable file, `generation` is 0 and `error` says why (valid for
/// the call). Runs on the watch's own thread; exceptions it throws are swallowed.
using WatchHandler = std::function<void(std::uint64_t generation, const Error* error)>;

/// A running policy-file watch (Engine::watch). Move-only; destroying it stops the watch (a
/// handler call in progress finishes first). Do not destroy it from its own handler.
class Watcher {
 public:
  Watcher() noexcept = default;
  explicit operator bool() const noexcept { return ptr_ != nullptr; }

 private:
  friend class Engine;
  static void trampoline(void* user_data, std::uint64_t generation,
                         const tg_error* error) noexcept {
    auto* handler = static_cast<WatchHandler*>(user_data);
    try {
      if (error == nullptr) {
        (*handler)(generation, nullptr);
      } else {
        const Error e(error);
        (*handler)(generation, &e);
      }
    } catch (...) {
      // A handler must not unwind into tollgate; there is nobody to report it to.
    }
  }

  // Declared first, destroyed last: the watch (ptr_) stops before its handler goes away.
  std::unique_ptr<WatchHandler> handler_;
  detail::WatcherPtr ptr_;
};

// ---------------------------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------------------------

/// An engine: the running policy, budgets, breakers, cache, transport and worker threads.
/// Move-only; every method is const and may be called from any number of threads at once.

/// A token count, and whether it is exact (the model's vocabulary) or an estimate.
struct TokenCount {
  std::uint64_t tokens = 0;
  bool exact = false;
};

/// A piece of a split text: `text` views the string given to Engine::split_text (valid while it
/// is); `start`/`end` are byte offsets into it, and the first `overlap` bytes repeat the end of
/// the previous chunk.
struct Chunk {
  std::string_view text;
  std::size_t start = 0;
  std::size_t end = 0;
  std::size_t overlap = 0;
  std::uint64_t tokens = 0;
  bool exact = false;
};

class Engine {
 public:
  Engine() noexcept = default;
  /// Adopts a tg_engine (freed with tg_engine_free).
  explicit Engine(tg_engine* raw) noexcept : ptr_(raw) {}

  /// Creates an engine from policy text (TOML or JSON). Throws Error(InvalidPolicy) with every
  /// problem, Error(InvalidUtf8), ...
  [[nodiscard]] static Engine from_text(std::string_view policy) {
    tg_engine* out = nullptr;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_new(detail::bytes(policy), policy.size(), &out, &err);
    throw_if_error(st, err);
    return Engine(out);
  }

  /// Creates an engine from a policy file (.json, .toml, or detected). Throws Error(Io) when the
  /// file cannot be read.
  [[nodiscard]] static Engine from_file(const std::filesystem::path& path) {
    const std::string p = path.string();
    tg_engine* out = nullptr;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_new_from_file(p.data(), p.size(), &out, &err);
    throw_if_error(st, err);
    return Engine(out);
  }

  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  [[nodiscard]] tg_engine* get() const noexcept { return ptr_.get(); }
  [[nodiscard]] tg_engine* release() noexcept { return ptr_.release(); }

  /// Replaces the running policy; returns the new generation. A refused policy throws
  /// Error(InvalidPolicy) with every problem, and the running policy stays.
  std::uint64_t reload(std::string_view policy) const {
    std::uint64_t generation = 0;
    tg_error* err = nullptr;
    const tg_status st =
        tg_engine_reload(ptr_.get(), detail::bytes(policy), policy.size(), &generation, &err);
    throw_if_error(st, err);
    return generation;
  }

  /// reload() from a file.
  std::uint64_t reload_file(const std::filesystem::path& path) const {
    const std::string p = path.string();
    std::uint64_t generation = 0;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_reload_file(ptr_.get(), p.data(), p.size(), &generation, &err);
    throw_if_error(st, err);
    return generation;
  }

  /// The number of accepted policies so far (1 after creation; 0 for an empty Engine).
  [[nodiscard]] std::uint64_t generation() const noexcept {
    return tg_engine_generation(ptr_.get());
  }

  /// The metrics in the Prometheus text format.
  [[nodiscard]] std::string metrics() const {
    tg_bytes* out = nullptr;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_metrics(ptr_.get(), &out, &err);
    throw_if_error(st, err);
    detail::BytesPtr owned(out);
    if (!owned || owned->data == nullptr) return std::string();
    return std::string(reinterpret_cast<const char*>(owned->data), owned->len);
  }

  /// Budget and cache counters as JSON: {"generation", "budgets": [{"name", "admitted",
  /// "waited", "denied", "tokens", "spend", "keys"}], "cache": {"hits", "misses", ...}}.
  [[nodiscard]] std::string stats() const {
    tg_bytes* out = nullptr;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_stats(ptr_.get(), &out, &err);
    throw_if_error(st, err);
    detail::BytesPtr owned(out);
    if (!owned || owned->data == nullptr) return std::string();
    return std::string(reinterpret_cast<const char*>(owned->data), owned->len);
  }

  /// Watches a policy file and reloads whenever its content changes (checked every `interval`,
  /// at least 10 ms). A refused or unreadable file keeps the running policy; `handler` (may be
  /// empty) hears every reload and refusal on the watch's thread. Keep the Watcher for as long
  /// as the watch should run, and destroy it before the engine.
  [[nodiscard]] Watcher watch(const std::filesystem::path& path,
                              std::chrono::milliseconds interval, WatchHandler handler = {}) const {
    const std::string p = path.string();
    Watcher w;
    w.handler_ = std::make_unique<WatchHandler>(std::move(handler));
    const bool has_handler = static_cast<bool>(*w.handler_);
    tg_watcher* out = nullptr;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_watch(
        ptr_.get(), p.data(), p.size(), static_cast<std::uint64_t>(interval.count()),
        has_handler ? &Watcher::trampoline : nullptr, w.handler_.get(), &out, &err);
    throw_if_error(st, err);
    w.ptr_.reset(out);
    return w;
  }

  // ---- decide API (hosts with their own HTTP client) ----

  /// Decides whether a call may go now (never blocks): Go with a Permit, Wait, or Deny.
  [[nodiscard]] Decision admit(const Call& call) const {
    const tg_call c = call.to_c();
    tg_decision d{};
    tg_error* err = nullptr;
    const tg_status st = tg_engine_admit(ptr_.get(), &c, &d, &err);
    throw_if_error(st, err);
    detail::PermitPtr permit(d.permit);
    detail::ErrorPtr denial(d.denial);
    Decision out;
    out.kind = static_cast<DecisionKind>(d.kind);
    out.after = std::chrono::nanoseconds(static_cast<std::int64_t>(d.after_ns));
    out.budget = detail::copy(d.budget);  // borrowed from `denial` for Deny: copy first
    out.limit = static_cast<Limit>(d.limit);
    if (denial) out.denial.emplace(denial.get());
    if (permit) out.permit.emplace(permit.release());
    return out;
  }

  /// Admits a call, waiting as long as the policy allows (blocks). A refusal throws
  /// Error(Status::Denied) with the budget; on a tollgate worker, Error(WrongThread).
  [[nodiscard]] Permit acquire(const Call& call) const {
    const tg_call c = call.to_c();
    tg_permit* out = nullptr;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_acquire(ptr_.get(), &c, &out, &err);
    throw_if_error(st, err);
    return Permit(out);
  }

  /// Settles an admitted attempt. The permit is consumed in every case (even when this throws).
  [[nodiscard]] Verdict settle(Permit&& permit, const Outcome& outcome) const {
    std::vector<tg_header> headers;
    headers.reserve(outcome.headers.size());
    for (const auto& h : outcome.headers) {
      headers.push_back(tg_header{detail::str(h.first), detail::str(h.second)});
    }
    tg_outcome o{};
    o.sent = outcome.sent;
    o.status = outcome.status;
    o.has_usage = outcome.usage.has_value();
    if (outcome.usage) o.usage = outcome.usage->to_c();
    o.latency_ns =
        outcome.latency.count() > 0 ? static_cast<std::uint64_t>(outcome.latency.count()) : 0;
    o.failure = static_cast<std::uint32_t>(outcome.failure);
    o.headers = headers.empty() ? nullptr : headers.data();
    o.headers_len = headers.size();
    o.content_delivered = outcome.content_delivered;

    tg_verdict v{};
    tg_error* err = nullptr;
    const tg_status st = tg_engine_settle(ptr_.get(), permit.release(), &o, &v, &err);
    throw_if_error(st, err);
    detail::AttemptPtr attempt(v.attempt);
    detail::ErrorPtr give_up(v.give_up);
    Verdict out;
    out.kind = static_cast<VerdictKind>(v.kind);
    out.settlement = Settlement::from_c(v.settlement);
    out.retry_after = std::chrono::nanoseconds(static_cast<std::int64_t>(v.retry_after_ns));
    if (give_up) out.give_up.emplace(give_up.get());
    if (attempt) out.attempt.emplace(attempt.release());
    return out;
  }

  // ---- tokens and long texts (the engine's model table: bundled + the policy's [models]) ----

  /// The tokens of `text` for `model`: exact for models with a vocabulary, else an estimate.
  /// Throws Error(InvalidArgument, code "unknown_model") for a model the table does not know.
  [[nodiscard]] TokenCount count_tokens(std::string_view model, std::string_view text) const {
    TokenCount out;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_count_tokens(ptr_.get(), detail::str(model), detail::str(text),
                                                &out.tokens, &out.exact, &err);
    throw_if_error(st, err);
    return out;
  }

  /// The prompt tokens of a chat request (JSON) as admission counts them: what the upstream
  /// bills as prompt_tokens.
  [[nodiscard]] TokenCount count_request(std::string_view request) const {
    TokenCount out;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_count_request(ptr_.get(), detail::bytes(request),
                                                 request.size(), &out.tokens, &out.exact, &err);
    throw_if_error(st, err);
    return out;
  }

  /// The context window of `model`, when the model table knows it.
  [[nodiscard]] std::optional<std::uint64_t> context_window(std::string_view model) const noexcept {
    const std::uint64_t w = tg_engine_context_window(ptr_.get(), detail::str(model));
    if (w == 0) return std::nullopt;
    return w;
  }

  /// `text` cut into chunks of at most `max_tokens` tokens of `model`, between paragraphs, else
  /// sentences, else clauses, else words; each counted on its own text. The chunks view `text`.
  /// Throws Error(InvalidArgument) with code zero_max, overlap_too_large,
  /// exceeds_context_window, unknown_model, empty or char_too_large.
  [[nodiscard]] std::vector<Chunk> split_text(std::string_view model, std::string_view text,
                                              std::size_t max_tokens,
                                              std::size_t overlap = 0) const {
    tg_chunks* raw = nullptr;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_split_text(ptr_.get(), detail::str(model), detail::str(text),
                                              max_tokens, overlap, &raw, &err);
    throw_if_error(st, err);
    detail::ChunksPtr chunks(raw);
    std::vector<Chunk> out;
    const std::size_t n = tg_chunks_len(chunks.get());
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      const tg_chunk* c = tg_chunks_get(chunks.get(), i);
      out.push_back(Chunk{text.substr(c->start, c->end - c->start), c->start, c->end, c->overlap,
                          c->tokens, c->exact});
    }
    return out;
  }

  // ---- cache API (hosts with their own HTTP client) ----

  /// Looks a chat request (JSON) up under the policy's cache rules (never blocks), in the
  /// entries of `tenant`: with `[cache] scope = "tenant"` (the default) tenants never see each
  /// other's entries; "" is a tenant like any other.
  [[nodiscard]] CacheLookup cache_lookup(std::string_view request,
                                         CacheMode mode = CacheMode::Default,
                                         std::string_view tenant = {}) const {
    tg_cache_result r{};
    tg_error* err = nullptr;
    const tg_status st = tg_engine_cache_lookup_for(
        ptr_.get(), detail::str(tenant), detail::bytes(request), request.size(),
        static_cast<std::uint32_t>(mode), &r, &err);
    throw_if_error(st, err);
    detail::CachedPtr hit(r.hit);
    detail::FillPtr fill(r.fill);
    detail::WaitPtr joined(r.joined);
    CacheLookup out;
    out.kind = static_cast<CacheKind>(r.kind);
    out.reason = detail::copy(r.reason);
    if (hit) out.hit.emplace(hit.release());
    if (fill) out.fill.emplace(fill.release());
    if (joined) out.joined.emplace(joined.release());
    return out;
  }

  /// Stores the response of a Miss and hands it to the waiters; `fill` is consumed in every case.
  /// Throws Error(Status::CacheRefused) when the answer was handed over but too large to store.
  void cache_store(CacheFill&& fill, std::uint16_t status, std::string_view body,
                   const std::optional<Usage>& usage = std::nullopt) const {
    tg_usage u{};
    if (usage) u = usage->to_c();
    tg_error* err = nullptr;
    const tg_status st =
        tg_engine_cache_store(ptr_.get(), fill.release(), status, detail::bytes(body), body.size(),
                              usage ? &u : nullptr, &err);
    throw_if_error(st, err);
  }

  /// Ends a Miss whose call failed: the waiters get Error(Status::Shared) with `message`.
  void cache_fail(CacheFill&& fill, std::string_view message) const {
    tg_error* err = nullptr;
    const tg_status st =
        tg_engine_cache_fail(ptr_.get(), fill.release(), message.data(), message.size(), &err);
    throw_if_error(st, err);
  }

  // ---- call API (tollgate makes the HTTP call) ----

  /// Sends a chat request (OpenAI JSON body) and blocks until it ends. Throws Error: Denied,
  /// GaveUp, Deadline, InvalidJson, ...; WrongThread inside a tollgate callback.
  [[nodiscard]] Response send(std::string_view request, const RequestOptions& options = {}) const {
    const tg_request_options o = options.to_c();
    tg_response* out = nullptr;
    tg_error* err = nullptr;
    const tg_status st =
        tg_engine_send(ptr_.get(), detail::bytes(request), request.size(), &o, &out, &err);
    throw_if_error(st, err);
    return Response(out);
  }

  /// Starts a send on tollgate's workers and returns at once. Bad input throws here; the call's
  /// own errors arrive through Pending::future.
  [[nodiscard]] Pending send_async(std::string_view request,
                                   const RequestOptions& options = {}) const {
    const tg_request_options o = options.to_c();
    auto state = std::make_unique<detail::SendState>();
    std::future<Response> future = state->promise.get_future();
    tg_task* task = nullptr;
    tg_error* err = nullptr;
    const tg_status st =
        tg_engine_send_async(ptr_.get(), detail::bytes(request), request.size(), &o,
                             &detail::send_trampoline, state.get(), &task, &err);
    detail::TaskPtr owned_task(task);
    if (st == TG_STATUS_OK) {
      // The callback owns the state now (it may even have run and deleted it already).
      static_cast<void>(state.release());
    }
    throw_if_error(st, err);  // on failure the callback never runs: `state` is freed here
    return Pending(std::move(future), std::move(owned_task));
  }

  /// Starts a streamed call: `on_event` for each event in order, then `on_end` exactly once, both
  /// on a tollgate worker thread (one call at a time). Bad input throws here.
  Task stream(std::string_view request, const RequestOptions& options, EventHandler on_event,
              EndHandler on_end) const {
    const tg_request_options o = options.to_c();
    auto state = std::make_shared<detail::StreamState>();
    state->on_event = std::move(on_event);
    state->on_end = std::move(on_end);
    std::future<void> done = state->done.get_future();
    auto holder = std::make_unique<std::shared_ptr<detail::StreamState>>(state);
    auto shared_task = std::make_shared<detail::SharedTask>();
    tg_task* task = nullptr;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_stream(ptr_.get(), detail::bytes(request), request.size(), &o,
                                          &detail::stream_trampoline, holder.get(), &task, &err);
    shared_task->task.reset(task);
    if (st == TG_STATUS_OK) static_cast<void>(holder.release());
    throw_if_error(st, err);
    {
      std::lock_guard<std::mutex> lock(state->mutex);
      state->task = shared_task;
      if (state->cancel_requested) shared_task->cancel();
    }
    return Task(std::move(done), std::move(shared_task));
  }

  /// stream() with the default options.
  Task stream(std::string_view request, EventHandler on_event, EndHandler on_end) const {
    return stream(request, RequestOptions{}, std::move(on_event), std::move(on_end));
  }

  /// Starts a streamed call read as a blocking range (see EventStream); at most `capacity` events
  /// wait in its queue. Bad input throws here.
  [[nodiscard]] EventStream stream_events(std::string_view request,
                                          const RequestOptions& options = {},
                                          std::size_t capacity = 256) const {
    const tg_request_options o = options.to_c();
    auto state = std::make_shared<detail::QueueState>(capacity);
    auto holder = std::make_unique<std::shared_ptr<detail::QueueState>>(state);
    tg_task* task = nullptr;
    tg_error* err = nullptr;
    const tg_status st = tg_engine_stream(ptr_.get(), detail::bytes(request), request.size(), &o,
                                          &detail::queue_trampoline, holder.get(), &task, &err);
    detail::TaskPtr owned_task(task);
    if (st == TG_STATUS_OK) static_cast<void>(holder.release());
    throw_if_error(st, err);
    return EventStream(std::move(state), std::move(owned_task));
  }

 private:
  detail::EnginePtr ptr_;
};

}  // namespace tollgate

#endif  // TOLLGATE_HPP
