"""The official `openai` Python package as a client of `tollgate serve`.

Run by tests/serve_clients.rs against a proxy in front of the testkit upstream; the same
scenarios as openai_client.mjs. Prints one line per check, `ok <name>` or `FAIL <name>: why`,
and exits 1 if any check failed.

Environment (set by the harness):
  TOLLGATE_BASE_URL     the proxy's OpenAI base URL, http://127.0.0.1:<port>/v1
  TOLLGATE_KEY          virtual key of a tenant with a roomy budget
  TOLLGATE_TINY_KEY     virtual key of a tenant whose budget allows only a few calls
  TOLLGATE_TINY_BUDGET  the name of that budget, as the 429 must name it
  TOLLGATE_RETRY_USER   the `user` for which the upstream answers 503 once
  TOLLGATE_QUOTA_USER   the `user` for which the upstream answers 429 insufficient_quota
  TOLLGATE_MODEL        the model to ask for

Reload handshake: once the tiny tenant is refused, the script prints WAITING_FOR_RELOAD and
reads one line from stdin; the harness raises the limit, then writes `reloaded`.
"""

import os
import sys
import time

import openai

TIMEOUT = 20.0
# Bounded: the tiny tenant is refused within this many calls or the check fails.
MAX_CALLS_UNTIL_DENIED = 6

BASE_URL = os.environ["TOLLGATE_BASE_URL"]
KEY = os.environ["TOLLGATE_KEY"]
TINY_KEY = os.environ["TOLLGATE_TINY_KEY"]
TINY_BUDGET = os.environ["TOLLGATE_TINY_BUDGET"]
RETRY_USER = os.environ["TOLLGATE_RETRY_USER"]
QUOTA_USER = os.environ["TOLLGATE_QUOTA_USER"]
MODEL = os.environ.get("TOLLGATE_MODEL", "gpt-4o")

failures = []


def say(line):
    print(line, flush=True)


def check(name, fn):
    """Runs one check; returns whether it passed."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        failures.append(name)
        why = f"{type(e).__name__}: {e}".replace("\n", " ")
        say(f"FAIL {name}: {why}")
        return False
    say(f"ok {name}")
    return True


def expect(cond, why):
    if not cond:
        raise AssertionError(why)


def client(key=KEY, max_retries=0):
    return openai.OpenAI(
        base_url=BASE_URL, api_key=key, max_retries=max_retries, timeout=TIMEOUT
    )


def ask(content, **extra):
    return {
        "model": MODEL,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def plain():
    c = client().chat.completions.create(**ask("python: plain"))
    expect(c.object == "chat.completion", f"object {c.object!r}")
    text = c.choices[0].message.content
    expect(isinstance(text, str) and text.strip(), f"empty content {text!r}")
    expect(c.usage is not None, "no usage")
    expect(c.usage.completion_tokens > 0, f"usage {c.usage}")
    expect(
        c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens,
        f"usage {c.usage}",
    )


def streamed():
    stream = client().chat.completions.create(
        **ask("python: stream", stream=True, stream_options={"include_usage": True})
    )
    chunks, parts, finish, usage = 0, [], None, None
    # The SDK ends the iteration at `data: [DONE]`; a [DONE] it could not handle would raise.
    with stream:
        for chunk in stream:
            chunks += 1
            expect(chunk.object == "chat.completion.chunk", f"object {chunk.object!r}")
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
    text = "".join(parts)
    expect(chunks >= 3, f"only {chunks} chunks")
    expect(len(parts) >= 2, f"content in {len(parts)} chunks: {text!r}")
    expect(text.strip(), "no content assembled")
    expect(finish is not None, "no finish_reason")
    expect(usage is not None and usage.completion_tokens > 0, f"usage {usage}")


def denied_then_reloaded():
    # Default SDK retries (2): the proxy's `x-should-retry: false` must stop the SDK from
    # retrying (or waiting out Retry-After) on its own.
    tiny = client(TINY_KEY, max_retries=2)
    err, allowed = None, 0
    for i in range(MAX_CALLS_UNTIL_DENIED):
        started = time.monotonic()
        try:
            tiny.chat.completions.create(**ask(f"python: tiny {i}"))
            allowed += 1
        except openai.RateLimitError as e:
            err, took = e, time.monotonic() - started
            break
    expect(err is not None, f"no RateLimitError after {allowed} calls")
    expect(allowed >= 1, "the tiny tenant was refused before any call went through")
    expect(err.status_code == 429, f"status {err.status_code}")
    retry_after = err.response.headers.get("retry-after")
    expect(retry_after is not None, "no retry-after header")
    expect(int(retry_after) >= 1, f"retry-after {retry_after!r}")
    body = err.body if isinstance(err.body, dict) else {}
    expect(body.get("budget") == TINY_BUDGET, f"error body {err.body!r}")
    expect(body.get("code") == "budget_exhausted", f"error body {err.body!r}")
    expect(body.get("type") == "rate_limit_exceeded", f"error body {err.body!r}")
    expect(took < 5.0, f"the SDK took {took:.1f}s: it retried a 429 marked x-should-retry: false")
    return tiny


def after_reload(tiny):
    say("WAITING_FOR_RELOAD")
    line = sys.stdin.readline()
    expect(line.strip() == "reloaded", f"harness said {line!r}")
    for i in range(3):
        c = tiny.chat.completions.create(**ask(f"python: after reload {i}"))
        expect(c.choices[0].message.content, "empty content")


def retried_503():
    # max_retries=0: only the proxy can have retried the upstream's 503.
    raw = client(max_retries=0).chat.completions.with_raw_response.create(
        **ask("python: retried", user=RETRY_USER)
    )
    expect(raw.status_code == 200, f"status {raw.status_code}")
    attempts = raw.headers.get("x-tollgate-attempts")
    expect(attempts == "2", f"x-tollgate-attempts {attempts!r} (want the 503 and its retry)")
    c = raw.parse()
    expect(c.choices[0].message.content, "empty content")


def quota_not_retried():
    # Default SDK retries (2): the upstream's 429 insufficient_quota is one no retry can fix;
    # the proxy sends it once and tells the SDK not to retry it either.
    started = time.monotonic()
    try:
        client(max_retries=2).chat.completions.create(**ask("python: quota", user=QUOTA_USER))
    except openai.RateLimitError as e:
        took = time.monotonic() - started
        expect(e.status_code == 429, f"status {e.status_code}")
        expect(e.code == "insufficient_quota", f"code {e.code!r}, body {e.body!r}")
        expect(e.response.headers.get("x-should-retry") == "false", "no x-should-retry: false")
        expect(took < 5.0, f"the SDK took {took:.1f}s: it retried")
        return
    raise AssertionError("the call went through")


def cache_hit():
    cl = client()
    req = ask("python: cache me", temperature=0)
    first = cl.chat.completions.with_raw_response.create(**req)
    second = cl.chat.completions.with_raw_response.create(**req)
    s1 = first.headers.get("x-tollgate-source")
    s2 = second.headers.get("x-tollgate-source")
    expect(s1 == "upstream", f"first x-tollgate-source {s1!r}")
    expect(s2 == "cache", f"second x-tollgate-source {s2!r}")
    a, b = first.parse(), second.parse()
    expect(a.id == b.id, f"ids {a.id} and {b.id}")
    expect(a.choices[0].message.content == b.choices[0].message.content, "content differs")


def invalid_key():
    try:
        client("vk-nobody-knows-this").chat.completions.create(**ask("python: bad key"))
    except openai.AuthenticationError as e:
        expect(e.status_code == 401, f"status {e.status_code}")
        expect(e.code == "invalid_api_key", f"code {e.code!r}")
        return
    raise AssertionError("the call went through")


def main():
    say(f"openai {openai.__version__} (python {sys.version.split()[0]}) against {BASE_URL}")
    check("plain completion", plain)
    check("streamed completion", streamed)
    tiny = []
    if check("budget denial is a RateLimitError", lambda: tiny.append(denied_then_reloaded())):
        check("reload raised the limit", lambda: after_reload(tiny[0]))
    else:
        failures.append("reload")
        say("FAIL reload raised the limit: skipped, the denial check failed")
    check("503 retried by the proxy, invisible to the client", retried_503)
    check("cache hit", cache_hit)
    check("invalid virtual key is an AuthenticationError", invalid_key)
    # Last: the quota error holds the upstream's only key, so later calls would be refused.
    check("insufficient_quota is not retried, by the proxy or the SDK", quota_not_retried)
    say(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
