"""Type-checked use of the public API (``mypy --strict`` over this file, in run.sh): every
entry point as a user writes it. Not run."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, Dict, List, Optional

import httpx
import openai

import tollgate
from tollgate import (
    AsyncChatStream,
    ChatResponse,
    ChatStream,
    Decision,
    DeniedError,
    GaveUpError,
    Permit,
    PolicyError,
    ReloadReport,
    Stats,
    StreamEvent,
    Tollgate,
    Usage,
    Verdict,
)

REQUEST: Dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def sync_calls(tg: Tollgate) -> Optional[str]:
    r: ChatResponse = tg.send(REQUEST, tenant="acme", deadline=30, priority=1, cache="bypass")
    usage: Optional[Usage] = r.usage
    if usage is not None:
        total: int = usage.total_tokens
        print(total)
    s: ChatStream = tg.stream(REQUEST, deadline=datetime.timedelta(seconds=30))
    for chunk in s:
        print(chunk)
    for event in tg.stream(REQUEST, raw=True):
        assert isinstance(event, StreamEvent)
    try:
        tg.send(b'{"model": "gpt-4o", "messages": []}')
    except DeniedError as e:
        budget: Optional[str] = e.budget
        after: Optional[float] = e.retry_after
        print(budget, after)
    except GaveUpError as e:
        status: Optional[int] = e.http_status
        print(status, e.history)
    return r.content


async def async_calls(tg: Tollgate) -> int:
    r = await tg.asend(REQUEST, tenant="acme")
    s: AsyncChatStream = await tg.astream(REQUEST)
    async for chunk in s:
        print(chunk)
    await s.aclose()
    p: Permit = await tg.aacquire("gpt-4o", prompt_tokens=10)
    v: Verdict = tg.settle(p, status=200, usage={"prompt_tokens": 10, "completion_tokens": 5})
    d: Decision = await tg.aadmit("gpt-4o", prompt="hello")
    if d.permit is not None:
        d.permit.release()
    print(v.settlement.tokens)
    return r.status


def decide(tg: Tollgate) -> None:
    d = tg.admit("gpt-4o", tenant="acme", prompt_tokens=100, max_tokens=50)
    if d.kind == "go" and d.permit is not None:
        v = tg.settle(d.permit, status=503, latency=0.2, headers={"retry-after": "1"})
        if v.kind == "retry" and v.attempt is not None:
            again = tg.admit("gpt-4o", prompt_tokens=100, attempt=v.attempt)
            print(again.kind)
    elif d.kind == "wait":
        after: Optional[float] = d.after
        print(after)
    elif d.error is not None:
        raise d.error
    p = tg.acquire("gpt-4o", request=REQUEST)
    tg.settle(p, failure="timeout_first_byte")


def policy_and_reports() -> None:
    try:
        tg = Tollgate("version = 1")
    except PolicyError as e:
        problems: List[str] = e.problems
        print(problems)
        return
    with tg:
        report: ReloadReport = tg.reload("version = 1")
        print(report.generation, report.added)
        stats: Stats = tg.stats()
        print(stats["budgets"][0]["admitted"], stats["cache"]["hits"], tg.metrics())
        with tg.watch("policy.toml", interval=1.0, on_reload=lambda r: print(r.kept), on_error=lambda e: print(e.problems)):
            pass
    with Tollgate.from_file("policy.toml") as tg2:
        print(tg2.generation)


def openai_sdk(tg: Tollgate) -> None:
    client = openai.OpenAI(api_key="unused", http_client=httpx.Client(transport=tg.transport(tenant="acme")))
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    print(r.choices[0].message.content)
    aclient = openai.AsyncOpenAI(api_key="unused", http_client=httpx.AsyncClient(transport=tg.async_transport()))

    async def go() -> None:
        r = await aclient.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        print(r.id)

    asyncio.run(go())


print(tollgate.__version__)
