// Install test of the C++ layer: tollgate.hpp from the installed prefix, found through
// find_package(tollgate) as tollgate::tollgate_cpp. Admit + settle, then one send through the
// test upstream whose base URL is the first argument. Exits 1 on any failure.
#include <tollgate.hpp>

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " BASE_URL\n";
    return 2;
  }
  try {
    const auto engine = tollgate::Engine::from_text(
        std::string("version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"") + argv[1] +
        "\"\n[[route]]\nmodel = \"gpt-4o-mini\"\n"
        "targets = [{ upstream = \"test\", model = \"gpt-4o-mini\" }]\n"
        "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 2\n");
    auto decision = engine.admit(tollgate::Call("gpt-4o-mini").with_tenant("acme").with_prompt_tokens(12));
    if (!decision.go()) {
      std::cerr << "FAIL: the first call did not go\n";
      return 1;
    }
    const auto verdict = engine.settle(std::move(*decision.permit), tollgate::Outcome::http(200));
    if (!verdict.done()) {
      std::cerr << "FAIL: settle did not say done\n";
      return 1;
    }
    tollgate::RequestOptions options;
    options.tenant = "acme";
    const auto response = engine.send(
        R"({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hello from C++"}]})",
        options);
    if (response.status() != 200 || response.body().find("chat.completion") == std::string_view::npos) {
      std::cerr << "FAIL: send answered " << response.status() << ": " << response.body() << "\n";
      return 1;
    }
    const auto denied = engine.admit(tollgate::Call("gpt-4o-mini").with_tenant("acme").with_prompt_tokens(12));
    if (!denied.deny() || denied.budget != "per-tenant") {
      std::cerr << "FAIL: the third call was not refused by per-tenant\n";
      return 1;
    }
  } catch (const tollgate::Error& e) {
    std::cerr << "FAIL: " << e.what() << "\n";
    return 1;
  }
  std::cout << "c++ install test: ok\n";
  return 0;
}
