// chat_service: a small multi-tenant chat service on tollgate's C++ binding.
//
//   chat_service POLICY.toml PROMPT...   send the prompts through the policy's upstream
//   chat_service                         demo: the in-process test upstream and a built-in policy
//                                        (needs TOLLGATE_TESTKIT: a library with the
//                                        `testkit` feature and tollgate_testkit.hpp)
//
// Worker threads share one Engine and send requests for several tenants with send_async; each
// outcome is ok, denied (by which budget) or gave up. One more answer is streamed. Finally the
// tollgate_call_answers_total metrics show the calls answered from the cache or a shared call.
#include "tollgate.hpp"
#if defined(TOLLGATE_TESTKIT)
#include "tollgate_testkit.hpp"
#endif

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Job {
  std::string tenant;
  std::string model;
  std::string prompt;
};

struct TenantReport {
  int ok = 0;
  int denied = 0;
  int gave_up = 0;
  int other = 0;
  std::map<std::size_t, std::string> lines;  // by job number, so the output keeps job order
};

const char* source_name(tollgate::Source source) {
  switch (source) {
    case tollgate::Source::Upstream: return "upstream";
    case tollgate::Source::Cache: return "cache";
    case tollgate::Source::Shared: return "shared";
    case tollgate::Source::Stale: return "stale";
  }
  return "?";
}

std::string quote(const std::string& text) {  // enough JSON escaping for the prompts here
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') { out += "\\n"; continue; }
    out += c;
  }
  return out + "\"";
}

/// An OpenAI chat request; tollgate adds `stream: true` itself for a stream.
std::string request(const Job& job) {
  return "{\"model\":" + quote(job.model) + ",\"temperature\":0,\"max_tokens\":12," +
         "\"messages\":[{\"role\":\"user\",\"content\":" + quote(job.prompt) + "}]}";
}

/// The `content` strings of a completion or chunk (plain text; escapes kept as they are).
std::string content(std::string_view json) {
  std::string out;
  const std::string_view key = "\"content\":\"";
  for (auto at = json.find(key); at != std::string_view::npos; at = json.find(key, at)) {
    at += key.size();
    auto end = at;
    while (end < json.size() && (json[end] != '"' || json[end - 1] == '\\')) ++end;
    out.append(json.substr(at, end - at));
    at = end;
  }
  return out;
}

std::string demo_policy(const std::string& base_url) {
  return "version = 1\n"
         "[[upstream]]\nname = \"local\"\nbase_url = \"" + base_url + "\"\n"
         "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 4\n"
         "[retry]\nmax_attempts = 2\nbackoff = { base = \"10ms\", max = \"50ms\" }\n"
         "[cache]\nenabled = true\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Job> jobs;
#if defined(TOLLGATE_TESTKIT)
  tollgate::testkit::Upstream upstream;  // declared first: destroyed after the engine
#endif
  tollgate::Engine engine;
  try {
    if (argc >= 3) {
      engine = tollgate::Engine::from_file(argv[1]);
      const char* model = std::getenv("TOLLGATE_MODEL");
      const std::vector<std::string> tenants = {"acme", "globex", "initech"};
      for (int i = 2; i < argc; ++i) {
        const std::string& tenant = tenants[static_cast<std::size_t>(i - 2) % tenants.size()];
        jobs.push_back({tenant, model != nullptr ? model : "gpt-4o-mini", argv[i]});
      }
    } else if (argc == 1) {
#if defined(TOLLGATE_TESTKIT)
      upstream = tollgate::testkit::Upstream::start(R"({"latency_ms": 20})");
      // The "flaky" model fails twice: with max_attempts = 2 that call gives up.
      upstream.script(R"({"match":{"model":"flaky"},"actions":["500","500"]})");
      engine = tollgate::Engine::from_text(demo_policy(upstream.base_url()));
      for (int i = 1; i <= 6; ++i) {
        jobs.push_back({"acme", "gpt-4o-mini", "acme question " + std::to_string(i)});
      }
      for (int i = 0; i < 3; ++i) {
        jobs.push_back({"globex", "gpt-4o-mini", "the same globex question"});
      }
      jobs.push_back({"initech", "gpt-4o-mini", "an initech question"});
      jobs.push_back({"initech", "flaky", "a question for a flaky model"});
#else
      std::cerr << "no arguments: the demo needs a build with TOLLGATE_TESTKIT\n";
      return 2;
#endif
    } else {
      std::cerr << "usage: " << argv[0] << " [POLICY PROMPT...]\n";
      return 2;
    }
  } catch (const tollgate::Error& e) {
    std::cerr << "cannot start: " << e.what() << "\n";
    for (const auto& p : e.problems()) std::cerr << "  " << p << "\n";
    return 1;
  }
  std::cout << "tollgate " << tollgate::version() << ", policy generation " << engine.generation()
            << ", " << jobs.size() << " requests\n";

  // Worker threads share the engine (its methods are thread-safe) and a job counter.
  std::map<std::string, TenantReport> reports;
  std::mutex reports_mutex;
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
    for (std::size_t i = next++; i < jobs.size(); i = next++) {
      const Job& job = jobs[i];
      std::string line;
      int TenantReport::*bucket = &TenantReport::other;
      try {
        tollgate::Pending pending =
            engine.send_async(request(job), tollgate::RequestOptions().with_tenant(job.tenant));
        if (pending.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
          pending.cancel();  // the future then throws Error(Status::Cancelled)
        }
        tollgate::Response r = pending.get();
        bucket = &TenantReport::ok;
        line = "ok (" + std::string(source_name(r.source())) + "): " + content(r.body());
      } catch (const tollgate::Error& e) {
        if (e.status() == tollgate::Status::Denied) {
          bucket = &TenantReport::denied;
          line = "denied by budget '" + e.budget() + "' (" + e.code() + ")";
        } else if (e.status() == tollgate::Status::GaveUp) {
          bucket = &TenantReport::gave_up;
          line = "gave up (" + e.code() + ", HTTP " + std::to_string(e.http_status()) + ")";
        } else {
          line = std::string(tollgate::to_string(e.status())) + ": " + e.what();
        }
      }
      std::lock_guard<std::mutex> lock(reports_mutex);
      TenantReport& report = reports[job.tenant];
      ++(report.*bucket);
      report.lines[i] = "[" + job.prompt + "] " + line;
    }
  };
  std::vector<std::thread> workers;
  for (int i = 0; i < 4; ++i) workers.emplace_back(worker);
  for (auto& t : workers) t.join();

  for (const auto& [tenant, report] : reports) {
    std::cout << "\n" << tenant << ": " << report.ok << " ok, " << report.denied << " denied, "
              << report.gave_up << " gave up";
    if (report.other > 0) std::cout << ", " << report.other << " other errors";
    std::cout << "\n";
    for (const auto& [job, l] : report.lines) std::cout << "  " << l << "\n";
  }

  // One streamed answer, printed as its events arrive.
  const Job live{"globex", "gpt-4o-mini", "stream a fresh answer"};
  std::cout << "\nstream for " << live.tenant << ": ";
  try {
    const auto options = tollgate::RequestOptions().with_tenant(live.tenant);
    tollgate::EventStream stream = engine.stream_events(request(live), options);
    for (const tollgate::Event& event : stream) std::cout << content(event.data) << std::flush;
    if (const tollgate::Response* end = stream.end_response(); end && end->usage()) {
      std::cout << "  [" << end->usage()->completion_tokens << " completion tokens]";
    }
    std::cout << "\n";
  } catch (const tollgate::Error& e) {
    std::cout << "\n  stream failed: " << tollgate::to_string(e.status()) << ": " << e.what()
              << "\n";
  }

  std::cout << "\nmetrics:\n";
  std::istringstream metrics(engine.metrics());
  for (std::string line; std::getline(metrics, line);) {
    if (line.rfind("tollgate_call_answers_total", 0) == 0) std::cout << "  " << line << "\n";
  }
  return 0;
}
