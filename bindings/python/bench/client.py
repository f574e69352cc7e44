#!/usr/bin/env python3
"""One benchmark client of the Python binding, in the shape of ../shared/bench's Python clients:
the same chat request to one upstream, N requests as N coroutines gathered at once, each
entering an asyncio.Semaphore(C), every answer parsed and checked; one JSON line on stdout:
``{client, n, c, secs, rps, p50_ms, p99_ms, errors, cpu_s, lib}``.

    client.py KIND N C      KIND: tollgate | tollgate-openai | httpx | aiohttp | openai

``tollgate``: Tollgate.asend with a permissive requests + tokens + concurrency budget per
tenant (exact prompt count, reserve, settle), no cache. ``tollgate-openai``: the official SDK's
AsyncOpenAI over ``tg.async_transport()`` (same policy). ``httpx``, ``aiohttp``, ``openai``:
the plain clients. The upstream is BENCH_URL (default http://127.0.0.1:18080, the nginx of
../shared/bench); ``cpu_s`` is this process's CPU time (every thread) over the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any, Awaitable, Callable, List, Optional, Tuple

BASE = os.environ.get("BENCH_URL", "http://127.0.0.1:18080").rstrip("/")
TIMEOUT_S = 30.0
# The request of ../shared/bench (common/request.json).
REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {
            "role": "system",
            "content": "You are a concise assistant for a platform SRE team. Answer in at most three sentences.",
        },
        {
            "role": "user",
            "content": "How do rate limits work on chat-completion APIs, and what should a client do when it gets HTTP 429?",
        },
    ],
    "temperature": 0.2,
    "max_tokens": 256,
}
HEADERS = {"Authorization": "Bearer test", "Content-Type": "application/json"}

POLICY = f"""version = 1
[[upstream]]
name = "bench"
base_url = "{BASE}/v1"
auth = {{ kind = "bearer", key = "env:TOLLGATE_BENCH_KEY" }}
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_second = 1000000
tokens_per_minute = 100000000000
concurrency = 100000
"""


def check(content: Any, total: Any) -> int:
    if not isinstance(content, str) or not isinstance(total, int) or total <= 0:
        raise ValueError(f"unexpected completion (content {type(content).__name__}, total_tokens {total!r})")
    return total


def check_body(d: Any) -> int:
    return check(d["choices"][0]["message"]["content"], d["usage"]["total_tokens"])


One = Callable[[], Awaitable[int]]
Close = Optional[Callable[[], Awaitable[None]]]


async def make_tollgate(c: int) -> Tuple[One, Close, str]:
    import tollgate

    os.environ["TOLLGATE_BENCH_KEY"] = "test"
    tg = tollgate.Tollgate(POLICY)

    async def one() -> int:
        r = await tg.asend(REQUEST, tenant="bench")
        return check_body(r.body)

    async def close() -> None:
        tg.close()

    return one, close, f"tollgate {tollgate.__version__}"


async def make_tollgate_openai(c: int) -> Tuple[One, Close, str]:
    import httpx
    import openai

    import tollgate

    os.environ["TOLLGATE_BENCH_KEY"] = "test"
    tg = tollgate.Tollgate(POLICY)
    client = openai.AsyncOpenAI(
        api_key="unused",
        base_url=BASE + "/v1",
        max_retries=2,
        timeout=TIMEOUT_S,
        http_client=httpx.AsyncClient(transport=tg.async_transport(tenant="bench")),
    )

    async def one() -> int:
        r = await client.chat.completions.create(**REQUEST)  # type: ignore[call-overload]
        return check(r.choices[0].message.content, r.usage.total_tokens)

    async def close() -> None:
        await client.close()
        tg.close()

    return one, close, f"tollgate {tollgate.__version__} + openai {openai.__version__}"


async def make_httpx(c: int) -> Tuple[One, Close, str]:
    import httpx

    client = httpx.AsyncClient(
        timeout=TIMEOUT_S, limits=httpx.Limits(max_connections=c, max_keepalive_connections=c)
    )
    url = BASE + "/v1/chat/completions"

    async def one() -> int:
        r = await client.post(url, json=REQUEST, headers=HEADERS)
        r.raise_for_status()
        return check_body(r.json())

    return one, client.aclose, f"httpx {httpx.__version__}"


async def make_aiohttp(c: int) -> Tuple[One, Close, str]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=c), timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
    )
    url = BASE + "/v1/chat/completions"

    async def one() -> int:
        async with session.post(url, json=REQUEST, headers=HEADERS) as r:
            r.raise_for_status()
            return check_body(await r.json())

    return one, session.close, f"aiohttp {aiohttp.__version__}"


async def make_openai(c: int) -> Tuple[One, Close, str]:
    import openai

    client = openai.AsyncOpenAI(base_url=BASE + "/v1", api_key="test", max_retries=2, timeout=TIMEOUT_S)

    async def one() -> int:
        r = await client.chat.completions.create(**REQUEST)  # type: ignore[call-overload]
        return check(r.choices[0].message.content, r.usage.total_tokens)

    return one, client.close, f"openai {openai.__version__}"


MAKERS = {
    "tollgate": make_tollgate,
    "tollgate-openai": make_tollgate_openai,
    "httpx": make_httpx,
    "aiohttp": make_aiohttp,
    "openai": make_openai,
}
NAMES = {"tollgate": "tollgate-python", "tollgate-openai": "openai-sdk+tollgate", "openai": "openai-sdk"}


async def main() -> None:
    args = sys.argv[1:]
    if len(args) != 3 or args[0] not in MAKERS:
        sys.exit(f"usage: client.py {'|'.join(MAKERS)} N C")
    kind, n, c = args[0], int(args[1]), int(args[2])
    if n <= 0 or c <= 0:
        sys.exit("N and C must be positive")
    one, close, lib = await MAKERS[kind](c)
    sem = asyncio.Semaphore(c)
    lat: List[float] = []
    errors: List[str] = []

    async def bounded() -> None:
        async with sem:
            s = time.perf_counter()
            try:
                await asyncio.wait_for(one(), TIMEOUT_S)
                lat.append(time.perf_counter() - s)
            except Exception as e:  # counted; the first few are printed
                errors.append(f"{type(e).__name__}: {e}")

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(bounded() for _ in range(n)))
    secs = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if close is not None:
        await close()
    for e in errors[:5]:
        print(f"{kind}: error: {e}", file=sys.stderr)
    lat.sort()

    def pct(q: float) -> Optional[float]:
        if not lat:
            return None
        return round(lat[min(len(lat) - 1, max(0, int(q * len(lat) + 0.999999) - 1))] * 1000, 3)

    print(
        json.dumps(
            {
                "client": NAMES.get(kind, kind),
                "n": n,
                "c": c,
                "secs": round(secs, 4),
                "rps": round(len(lat) / secs, 1),
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
                "errors": len(errors),
                "cpu_s": round(cpu, 3),
                "lib": lib,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
