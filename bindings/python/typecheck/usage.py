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
    Chunk,
    Conversation,
    Decision,
    DeniedError,
    GaveUpError,
    MemoryMessageStore,
    Message,
    MessageStoreError,
    Permit,
    PolicyError,
    Progress,
    ReloadReport,
    Reply,
    Stats,
    StreamEvent,
    TokenCount,
    Tollgate,
    TooLongError,
    UnknownParentError,
    Usage,
    Verdict,
    count_tokens,
    split_text,
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


def conversations_and_texts(tg: Tollgate) -> None:
    c: Conversation = tg.conversation("gpt-4o", system_message="Be brief.", max_response_tokens=200, tenant="acme")
    r: Reply = c.send("What is GCRA?")
    r2 = c.send("And a token bucket?", parent_message_id=r.id, on_progress=lambda p: print(p.delta, end=""))
    kept: int = r2.history_kept
    err: Optional[MessageStoreError] = r2.store_error
    print(r2.text, r2.conversation_id, kept, err, r2.usage)
    shared = Conversation(tg, "gpt-4o", store=tg.redis_message_store(ttl=3600))
    stored: Optional[Message] = shared.store.get(r.id)
    print(stored)

    async def go() -> None:
        async def progress(p: Progress) -> None:
            print(p.text)

        r3 = await c.asend("Once more", parent_message_id=r2.id, on_progress=progress)
        print(r3.prompt_tokens)

    asyncio.run(go())
    try:
        c.send("x" * 1_000_000)
    except TooLongError as e:
        print(e.needed, e.budget)
    except UnknownParentError as e:
        print(e.parent_message_id)
    chunks: List[Chunk] = split_text("gpt-4o", "long text", 500, overlap=50)
    print([(ch.start, ch.end, ch.tokens) for ch in chunks], tg.split_text("gpt-4o", "text", 10))
    n: TokenCount = count_tokens("gpt-4o", "hello")
    print(n.tokens, n.exact, tg.count_tokens("gpt-4o", "hi").tokens, tg.count_request({"model": "gpt-4o", "messages": []}))
    store = MemoryMessageStore(max_messages=100)
    store.put(Message("id", "user", "hi", "conv"))
    print(tg.context_window("gpt-4o"), len(store))


print(tollgate.__version__)
