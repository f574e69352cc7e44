"""tollgate from Python in the three styles of bindings/python/README.md: sync, asyncio, and the
official openai SDK through tollgate's httpx transport.

    bash bindings/python/run.sh                  # once: builds and installs the wheel into a venv
    $CARGO_TARGET_DIR/python/venv/bin/python examples/python/quickstart.py

This example runs against tollgate's test upstream on loopback (the tollgate_testkit module of
the test venv), so it needs no API key; for the real service put
`base_url = "https://api.openai.com/v1"` and `auth = { kind = "bearer", keys = ["env:OPENAI_API_KEY"] }`
under [[upstream]].
"""

import asyncio

import httpx
import openai
import tollgate_testkit

from tollgate import DeniedError, Tollgate

upstream = tollgate_testkit.TestUpstream(latency_ms=20)
POLICY = f"""
version = 1

[[upstream]]
name = "openai"
base_url = "{upstream.base_url}"

[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 4
tokens_per_minute = 10000

[retry]
max_attempts = 3
backoff = {{ base = "50ms", max = "500ms" }}
"""
request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}

with Tollgate(POLICY) as tg:
    # Sync: tollgate makes the call; the GIL is released while it waits.
    r = tg.send(request, tenant="acme", deadline=30)
    print("sync:  ", r.content, "| charged", r.settlement.tokens if r.settlement else None, "tokens")
    text = ""
    for chunk in tg.stream(request, tenant="acme"):
        for choice in chunk.get("choices", []):
            text += choice["delta"].get("content") or ""
    print("stream:", text)

    # asyncio: the event loop never blocks; cancelling the task cancels the call.
    async def main() -> None:
        r = await tg.asend(request, tenant="acme")
        print("async: ", r.content)

    asyncio.run(main())

    # The official openai SDK through tollgate: the same budget, tollgate's retries, no SDK retries.
    client = openai.OpenAI(api_key="unused", http_client=httpx.Client(transport=tg.transport(tenant="acme")))
    answer = client.chat.completions.create(**request)
    print("openai:", answer.choices[0].message.content)
    try:
        client.chat.completions.create(**request)  # the fifth call of a 4-a-minute budget
    except openai.RateLimitError as e:
        print("openai: RateLimitError from tollgate, x-should-retry:", e.response.headers["x-should-retry"])
    try:
        tg.send(request, tenant="acme")
    except DeniedError as e:
        print(f"sync:   denied by budget '{e.budget}', retry after {e.retry_after:.0f} s")

upstream.close()
