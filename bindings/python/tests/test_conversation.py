"""Conversations against the test upstream: parent links and the prompt count the upstream
bills, a history cut by that count, a message too long on its own, streams (progress, cut,
cancel), asyncio, a conversation continued over Redis by a second engine, and bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any, List, Optional

import pytest
from conftest import policy

import tollgate
from tollgate import (
    Conversation,
    InvalidRequestError,
    MemoryMessageStore,
    Message,
    MessageStoreError,
    StreamCutError,
    TooLongError,
    UnknownParentError,
)


def conv(tg: tollgate.Tollgate, **options: Any) -> Conversation:
    options.setdefault("system_message", "You are terse.")
    options.setdefault("max_response_tokens", 8)
    options.setdefault("tenant", "acme")
    return tg.conversation("gpt-4o", **options)


def sent(up: Any, n: int) -> List[Any]:
    """The messages of the upstream's n-th request."""
    return json.loads(up.log()[n]["body"])["messages"]


def test_three_turns_send_the_history_link_the_messages_and_count_what_the_upstream_bills(up, engine):
    tg = engine()
    c = conv(tg)
    assert tg.conversation("gpt-4o").max_model_tokens == 128000, "the model's window from the model table"
    assert tg.conversation("gpt-4o").max_response_tokens == 1000
    r1 = c.send("What is a token bucket?")
    r2 = c.send("And a leaky bucket?", parent_message_id=r1.id)
    r3 = c.send("Which one is GCRA?", parent_message_id=r2.id)
    for r in (r1, r2, r3):
        assert r.message.role == "assistant"
        assert len(r.text.split(" ")) == 8
        assert r.detail["object"] == "chat.completion"
        assert r.prompt_tokens == r.usage.prompt_tokens, "the count is the one the upstream billed"
        assert r.conversation_id == r1.conversation_id
        assert r.store_error is None
        assert r.finish_reason == "length"
        assert r.settlement is not None and r.settlement.tokens == r.usage.total_tokens
    assert [r.history_kept for r in (r1, r2, r3)] == [0, 2, 4]
    assert sent(up, 2) == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is a token bucket?"},
        {"role": "assistant", "content": r1.text},
        {"role": "user", "content": "And a leaky bucket?"},
        {"role": "assistant", "content": r2.text},
        {"role": "user", "content": "Which one is GCRA?"},
    ]
    body = json.loads(up.log()[2]["body"])
    assert body["max_tokens"] == 8 and "stream" not in body
    # Parent links: answer -> its question -> the previous answer.
    q3 = c.store.get(r3.message.parent_message_id)
    assert q3 == Message(r3.user_message.id, "user", "Which one is GCRA?", r1.conversation_id, r2.id)
    assert c.store.get(r3.id).text == r3.text
    assert len(c.store) == 6
    # Chosen ids are kept.
    r4 = c.send("New topic", message_id="q-4", conversation_id="conv-x")
    assert r4.message.parent_message_id == "q-4" and r4.conversation_id == "conv-x"
    assert r4.history_kept == 0


def test_a_history_that_does_not_fit_is_cut_oldest_first_by_the_count_admission_makes(up, engine):
    tg = engine()
    c = conv(tg)
    last: Optional[tollgate.Reply] = None
    for q in ("first question here", "second question here", "third question here"):
        last = c.send(q, parent_message_id=None if last is None else last.id)
    assert last is not None
    small = conv(tg, max_model_tokens=60, store=c.store)
    r = small.send("fourth question", parent_message_id=last.id)
    assert r.history_dropped > 0 and r.history_kept > 0, (r.history_kept, r.history_dropped)
    assert r.history_kept + r.history_dropped == 6
    assert r.prompt_tokens <= 52
    assert r.prompt_tokens == r.usage.prompt_tokens
    messages = sent(up, 3)
    assert len(messages) == r.history_kept + 2
    assert messages[0] == {"role": "system", "content": "You are terse."}
    assert messages[-1] == {"role": "user", "content": "fourth question"}
    assert messages[-2]["content"] == last.text, "the newest turn is kept"
    # One more (older) message would not have fitted: the request with it counts above 52.
    history = _history(c.store, last.id)
    one_more = history[r.history_dropped - 1]
    bigger = {"model": "gpt-4o", "messages": [messages[0], {"role": one_more.role, "content": one_more.text}] + messages[1:]}
    assert tg.count_request(bigger).tokens > 52


def _history(store: MemoryMessageStore, last: str) -> List[Message]:
    out: List[Message] = []
    nxt: Optional[str] = last
    while nxt is not None:
        m = store.get(nxt)
        assert m is not None
        out.insert(0, m)
        nxt = m.parent_message_id
    return out


def test_a_message_that_alone_is_too_long_is_refused_with_the_numbers_and_nothing_sent_or_stored(up, engine):
    c = conv(engine(), max_model_tokens=100, max_response_tokens=50)
    with pytest.raises(TooLongError) as info:
        c.send("word " * 200)
    e = info.value
    assert isinstance(e, InvalidRequestError) and e.code == "too_long"
    assert (e.budget, e.window, e.reserved) == (50, 100, 50)
    assert e.needed > 200
    assert str(e.needed) in str(e) and "50" in str(e)
    assert up.requests == 0
    assert len(c.store) == 0


def test_on_progress_streams_the_answer_and_assembles_it(make_up):
    up = make_up(drip_ms=2)
    tg = tollgate.Tollgate(policy(up))
    c = conv(tg, max_response_tokens=12)
    partials: List[tollgate.Progress] = []
    r = c.send("tell me", on_progress=partials.append)
    assert r.text == "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
    assert len(partials) >= 2
    assert "".join(p.delta for p in partials) == r.text
    assert all(r.text.startswith(p.text) and p.id == r.id for p in partials)
    assert partials[-1].text == r.text
    assert r.detail["choices"][0]["message"]["content"] == r.text
    assert r.detail["choices"][0]["finish_reason"] == r.finish_reason == "length"
    assert r.detail["usage"]["prompt_tokens"] == r.prompt_tokens
    assert r.usage.completion_tokens == 12
    assert json.loads(up.log()[0]["body"])["stream"] is True
    assert len(c.store) == 2
    tg.close()


def test_a_stream_cut_mid_answer_raises_and_stores_nothing(up, engine):
    up.script([{"kind": "cut_stream_after", "n": 3}], stream=True)
    c = conv(engine(), max_response_tokens=40)
    progress: List[tollgate.Progress] = []
    with pytest.raises(StreamCutError) as info:
        c.send("go on", on_progress=progress.append)
    assert info.value.settlement is not None
    assert progress, "content arrived before the cut"
    assert up.requests == 1, "content was delivered: not retried"
    assert len(c.store) == 0


def test_asyncio_turns_progress_coroutines_and_cancellation(up, engine):
    tg = engine('[[budget]]\nname = "one"\nconcurrency = 1\n')
    c = conv(tg)

    async def main() -> None:
        r1 = await c.asend("first")
        seen: List[str] = []

        async def on_progress(p: tollgate.Progress) -> None:
            await asyncio.sleep(0)
            seen.append(p.delta)

        r2 = await c.asend("second", parent_message_id=r1.id, on_progress=on_progress)
        assert "".join(seen) == r2.text and r2.history_kept == 2
        assert r2.prompt_tokens == r2.usage.prompt_tokens
        # A call cancelled while the upstream is slow: its slot is freed and nothing stored.
        up.script([{"kind": "slow_first_byte", "ms": 10_000}])
        task = asyncio.ensure_future(c.asend("slow", parent_message_id=r2.id))
        for _ in range(500):
            if up.requests == 3:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        r3 = await asyncio.wait_for(c.asend("after", parent_message_id=r2.id), 10)
        assert r3.history_kept == 4

    asyncio.run(main())
    assert len(c.store) == 6, "the cancelled turn stored nothing"


class FailingStore:
    """Fails every read or write of the ids it is told to."""

    def __init__(self) -> None:
        self.inner = MemoryMessageStore()
        self.fail_get = False
        self.fail_put = False

    def get(self, id: str) -> Optional[Message]:
        if self.fail_get:
            raise OSError("disk on fire")
        return self.inner.get(id)

    def put(self, message: Message) -> None:
        if self.fail_put:
            raise OSError("disk full")
        self.inner.put(message)


def test_bad_input_and_failing_stores(up, engine):
    tg = engine()
    c = conv(tg)
    with pytest.raises(InvalidRequestError) as info:
        c.send("")
    assert info.value.code == "empty"
    with pytest.raises(TypeError):
        c.send(42)  # type: ignore[arg-type]
    with pytest.raises(UnknownParentError) as unknown:
        c.send("hello", parent_message_id="no-such-id")
    assert unknown.value.code == "unknown_parent" and unknown.value.parent_message_id == "no-such-id"
    assert "no-such-id" in str(unknown.value)
    for options, code in (
        ({"completion_params": {"model": "gpt-4o-mini"}}, "invalid_argument"),
        ({"completion_params": {"max_tokens": 5}}, "invalid_argument"),
        ({"max_model_tokens": 8, "max_response_tokens": 8}, "no_room"),
        ({"max_response_tokens": 0}, "invalid_argument"),
    ):
        with pytest.raises(InvalidRequestError) as bad:
            conv(tg, **options)
        assert bad.value.code == code, options
    with pytest.raises(InvalidRequestError) as window:
        tg.conversation("my-own-model")
    assert window.value.code == "unknown_window" and "max_model_tokens" in str(window.value)
    with pytest.raises(TypeError):
        tg.conversation("gpt-4o", store=object())
    with pytest.raises(InvalidRequestError) as no_redis:
        tg.redis_message_store()
    assert no_redis.value.code == "no_redis"
    assert up.requests == 0

    # A store that fails: the call answers, with the store's error.
    store = FailingStore()
    f = conv(tg, store=store)
    r1 = f.send("one")
    store.fail_get = True
    r2 = f.send("two", parent_message_id=r1.id)
    assert isinstance(r2.store_error, MessageStoreError) and "disk on fire" in str(r2.store_error)
    assert r2.history_kept == 0, "sent without the history it could not read"
    store.fail_get, store.fail_put = False, True
    r3 = f.send("three", parent_message_id=r1.id)
    assert r3.history_kept == 2
    assert isinstance(r3.store_error, MessageStoreError) and "not kept" in str(r3.store_error)
    assert f.store.inner.get(r3.id) is None
    # A call that fails stores nothing.
    store.fail_put = False
    up.script([{"kind": "status", "status": 400}])
    with pytest.raises(tollgate.GaveUpError):
        f.send("four", parent_message_id=r1.id)
    assert len(store.inner) == 4


class AsyncOnlyStore:
    """A store with coroutine methods only (as over an async database driver)."""

    def __init__(self) -> None:
        self.messages: dict = {}

    async def aget(self, id: str) -> Optional[Message]:
        await asyncio.sleep(0)
        return self.messages.get(id)

    async def aput(self, message: Message) -> None:
        await asyncio.sleep(0)
        self.messages[message.id] = message


def test_a_store_with_coroutines_only_serves_asend(up, engine):
    c = conv(engine(), store=AsyncOnlyStore())

    async def main() -> None:
        r1 = await c.asend("one")
        r2 = await c.asend("two", parent_message_id=r1.id)
        assert r2.history_kept == 2 and r2.store_error is None

    asyncio.run(main())
    assert len(c.store.messages) == 4
    with pytest.raises(TypeError, match="asend"):
        c.send("sync")


def test_a_second_engine_continues_the_conversation_over_redis(redis, up):
    url, _ = redis
    rest = f'[redis]\nurl = "{url}"\nkey_prefix = "pyconv"\non_failure = "fail_closed"\n'
    a = tollgate.Tollgate(policy(up, rest))
    b = tollgate.Tollgate(policy(up, rest))
    ca = conv(a, store=a.redis_message_store(ttl=60))
    cb = conv(b, store=b.redis_message_store(ttl=60))
    r1 = ca.send("first, from process a")

    async def main() -> tollgate.Reply:
        return await cb.asend("second, from process b", parent_message_id=r1.id)

    r2 = asyncio.run(main())
    assert r2.history_kept == 2 and r2.conversation_id == r1.conversation_id
    assert sent(up, 1)[1:3] == [
        {"role": "user", "content": "first, from process a"},
        {"role": "assistant", "content": r1.text},
    ]
    stored = ca.store.get(r2.id)
    assert stored is not None and stored.text == r2.text and stored.parent_message_id == r2.user_message.id
    assert ca.store.get("never-stored") is None
    a.close()
    b.close()
