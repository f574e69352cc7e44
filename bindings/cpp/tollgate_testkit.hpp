// tollgate_testkit.hpp: tollgate::testkit, the test hooks of the C ABI (tollgate_testkit.h) for
// C++: the fault-injecting test upstream and tg_test_panic. Only for tollgate's own tests and
// examples, with a library built with the `testkit` feature; release libraries do not have them.

#ifndef TOLLGATE_TESTKIT_HPP
#define TOLLGATE_TESTKIT_HPP

#include <tollgate_testkit.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "tollgate.hpp"

namespace tollgate {
namespace testkit {

/// A fault-injecting OpenAI-compatible server on 127.0.0.1 with its own threads. Move-only;
/// destroying it stops it.
class Upstream {
 public:
  Upstream() noexcept = default;
  explicit Upstream(tg_test_upstream* raw) noexcept : ptr_(raw) {}

  /// Starts one. `options` is JSON ({"latency_ms": 0, "drip_ms": 0, "words": 16, ...}) or empty.
  [[nodiscard]] static Upstream start(std::string_view options = {}) {
    tg_test_upstream* out = nullptr;
    tg_error* err = nullptr;
    const tg_status st = tg_test_upstream_start(detail::bytes(options), options.size(), &out, &err);
    throw_if_error(st, err);
    return Upstream(out);
  }

  explicit operator bool() const noexcept { return ptr_ != nullptr; }

  /// The base URL, http://127.0.0.1:PORT/v1.
  [[nodiscard]] std::string base_url() const { return tg_test_upstream_base_url(ptr_.get()); }

  /// Scripts the next matching requests: {"match": {...}, "actions": ["503", "normal"]}.
  void script(std::string_view json) const {
    tg_error* err = nullptr;
    const tg_status st =
        tg_test_upstream_script(ptr_.get(), detail::bytes(json), json.size(), &err);
    throw_if_error(st, err);
  }

  /// How many requests it has received.
  [[nodiscard]] std::uint64_t requests() const noexcept {
    return tg_test_upstream_requests(ptr_.get());
  }

 private:
  detail::Owned<tg_test_upstream, tg_test_upstream_free> ptr_;
};

/// Panics inside tollgate's panic boundary: throws Error(Status::Panic).
inline void panic() {
  tg_error* err = nullptr;
  const tg_status st = tg_test_panic(&err);
  throw_if_error(st, err);
}

}  // namespace testkit

}  // namespace tollgate

#endif  // TOLLGATE_TESTKIT_HPP
