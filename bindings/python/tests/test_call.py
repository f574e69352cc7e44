"""The call API against the test upstream: send and stream (sync and asyncio), denials, retries,
cuts, deadlines, cancellation, budgets across threads and tasks, reload under load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import chat, policy

import tollgate
from tollgate import DeadlineError, DeniedError, GaveUpError, InvalidRequestError, StreamCutError

ONE_SLOT = '[[budget]]\nname = "one"\nconcurrency = 1\n'


def test_send_returns_the_answer_with_usage_and_charge(up, engine):
    tg = engine()
    r = tg.send(chat(), tenant="acme")
    assert r.status == 200
    assert r.source == "upstream"
    assert r.attempts == 1
    assert len(r.content.split(" ")) == 8
    assert r.body["object"] == "chat.completion"
    assert r.usage.completion_tokens == 8
    assert r.settlement.tokens == r.usage.total_tokens
    assert up.requests == 1
    arrival = up.log()[0]
    assert arrival["path"] == "/v1/chat/completions"
    assert "stream" not in json.loads(arrival["body"])


def test_send_accepts_json_text_and_bytes(up, engine):
    tg = engine()
    assert tg.send(json.dumps(chat())).status == 200
    assert tg.send(json.dumps(chat()).encode()).status == 200
    assert up.requests == 2


def test_send_retries_a_503_and_reports_the_history(up, engine):
    up.script(["status_503"])
    tg = engine('[retry]\nbackoff = { base = "10ms", max = "20ms" }\n')
    r = tg.send(chat())
    assert r.attempts == 2
    assert r.history[0].outcome == "status_503"
    assert up.count_status(503) == 1


def test_a_call_given_up_carries_the_upstream_status_and_body(up, engine):
    up.script([{"kind": "status", "status": 400}])
    tg = engine()
    with pytest.raises(GaveUpError) as info:
        tg.send(chat())
    assert info.value.code == "not_retryable"
    assert info.value.http_status == 400
    assert '"error"' in info.value.body
    assert info.value.history[0]["outcome"] == "status_400"


def test_a_budget_denial_raises_denied_error_naming_the_budget(up, engine):
    tg = engine('[[budget]]\nname = "per-tenant"\nscope = ["tenant"]\nrequests_per_minute = 1\n')
    tg.send(chat(), tenant="acme")
    with pytest.raises(DeniedError) as info:
        tg.send(chat(), tenant="acme")
    e = info.value
    assert e.code == "budget_exhausted"
    assert e.budget == "per-tenant"
    assert e.key == "tenant=acme"
    assert e.retry_after > 1.0
    assert isinstance(e, tollgate.TollgateError)
    assert up.requests == 1, "the denied call never reached the upstream"
    # Another tenant has its own budget.
    assert tg.send(chat(), tenant="other").status == 200


def test_stream_yields_chunks_in_order_then_usage_and_settlement(make_up):
    up = make_up(drip_ms=2)
    with tollgate.Tollgate(policy(up)) as tg:
        s = tg.stream(chat("tell me", max_tokens=12), tenant="acme")
        assert s.status == 200
        assert s.usage is None
        text = ""
        chunks = 0
        for chunk in s:
            chunks += 1
            for c in chunk.get("choices", []):
                text += c["delta"].get("content") or ""
        assert chunks >= 3
        assert len(text.split()) == 12
        assert s.usage.completion_tokens == 12
        assert s.settlement.tokens == s.usage.total_tokens
        assert json.loads(up.log()[0]["body"])["stream"] is True


def test_raw_stream_yields_the_events_with_done_last(up, engine):
    tg = engine()
    events = list(tg.stream(chat(), raw=True))
    assert all(isinstance(e, tollgate.StreamEvent) for e in events)
    assert events[-1].data == "[DONE]"
    assert json.loads(events[0].data)["object"] == "chat.completion.chunk"


def test_a_stream_cut_mid_answer_raises_stream_cut_error(up, engine):
    up.script(["normal", {"kind": "cut_stream_after", "n": 2}])
    tg = engine()
    tg.send(chat())  # the first scripted action: a normal answer
    s = tg.stream(chat("long answer", max_tokens=50))
    seen = 0
    with pytest.raises(StreamCutError):
        for _ in s:
            seen += 1
    assert seen >= 1
    assert up.requests == 2, "content was delivered: no retry"


def test_closing_a_stream_frees_its_slot(make_up):
    up = make_up(drip_ms=20)
    with tollgate.Tollgate(policy(up, ONE_SLOT)) as tg:
        with tg.stream(chat("go on", max_tokens=100)) as s:
            next(iter(s))
        d = tg.admit("gpt-4o", prompt_tokens=1)
        assert d.kind == "go", "the slot was freed by close"
        assert d.permit is not None and d.permit.release()


def test_ctrl_c_interrupts_a_blocking_send_and_frees_its_slot(up, engine):
    up.script([{"kind": "slow_first_byte", "ms": 60000}])
    tg = engine(ONE_SLOT)

    def interrupt_once_sent() -> None:
        for _ in range(1000):
            if up.requests:
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # the main thread, waiting in send, gets it

    # Python's own SIGINT handler, even when this process was started with SIGINT ignored (a
    # background job of a shell without job control).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    t = threading.Thread(target=interrupt_once_sent)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            tg.send(chat())
    finally:
        t.join()
        signal.signal(signal.SIGINT, previous)
    assert up.log()[0]["status"] is None, "interrupted while the upstream still held the answer"
    d = tg.admit("gpt-4o", prompt_tokens=1)
    assert d.kind == "go", "the interrupted call's slot is free"
    assert d.permit is not None and d.permit.release()


def test_a_deadline_raises_deadline_error(up, engine):
    up.script([{"kind": "slow_first_byte", "ms": 5000}])
    tg = engine()
    with pytest.raises(DeadlineError):
        tg.send(chat(), deadline=0.1)


def test_budgets_hold_across_threads(up, engine):
    tg = engine('[[budget]]\nname = "rpm"\nrequests_per_minute = 10\n')

    def one(_: int) -> str:
        try:
            tg.send(chat())
            return "ok"
        except DeniedError:
            return "denied"

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(48)))
    assert results.count("ok") == 10
    assert results.count("denied") == 38
    assert up.requests == 10
    stats = tg.stats()
    assert stats["budgets"][0]["admitted"] == 10
    assert stats["budgets"][0]["denied"] == 38


def test_asend_and_astream(up, engine):
    tg = engine()

    async def main() -> None:
        r = await tg.asend(chat(), tenant="acme")
        assert r.status == 200 and r.usage.completion_tokens == 8
        s = await tg.astream(chat(max_tokens=10))
        text = ""
        async for chunk in s:
            for c in chunk.get("choices", []):
                text += c["delta"].get("content") or ""
        assert len(text.split()) == 10
        assert s.settlement is not None

    asyncio.run(main())
    assert up.requests == 2


def test_budgets_hold_across_asyncio_tasks(up, engine):
    tg = engine('[[budget]]\nname = "rpm"\nrequests_per_minute = 10\n')

    async def one() -> str:
        try:
            await tg.asend(chat())
            return "ok"
        except DeniedError:
            return "denied"

    async def main() -> list:
        return await asyncio.gather(*(one() for _ in range(48)))

    results = asyncio.run(main())
    assert results.count("ok") == 10
    assert results.count("denied") == 38
    assert up.requests == 10


def test_cancelling_the_task_cancels_the_call_and_frees_its_slot(up, engine):
    up.script([{"kind": "slow_first_byte", "ms": 10000}])
    tg = engine(ONE_SLOT)

    async def main() -> None:
        slow = asyncio.create_task(tg.asend(chat()))
        while up.requests == 0:  # the call reached the upstream: it holds the slot
            await asyncio.sleep(0.01)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        # The slot is free again: the next call is admitted and answered (not after 10 s).
        r = await asyncio.wait_for(tg.asend(chat()), timeout=5)
        assert r.status == 200

    asyncio.run(main())


def test_cancelling_an_astream_mid_way_frees_its_slot(make_up):
    up = make_up(drip_ms=30)
    with tollgate.Tollgate(policy(up, ONE_SLOT)) as tg:

        async def reader(seen: asyncio.Event) -> None:
            s = await tg.astream(chat("long", max_tokens=200))
            async for _ in s:
                seen.set()

        async def main() -> None:
            seen = asyncio.Event()
            task = asyncio.create_task(reader(seen))
            await asyncio.wait_for(seen.wait(), timeout=10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert tg.admit("gpt-4o", prompt_tokens=1).kind == "go"

        asyncio.run(main())


def test_reload_under_load_drops_no_call_and_the_new_limit_applies_after(make_up):
    up = make_up(latency_ms=300)

    def budget(n: int) -> str:
        return f'[[budget]]\nname = "rpm"\nrequests_per_minute = {n}\n'

    tg = tollgate.Tollgate(policy(up, budget(100000)))

    async def main() -> None:
        calls = [asyncio.create_task(tg.asend(chat(f"call {i}", max_tokens=2))) for i in range(300)]
        # Reload once every call was admitted and reached the upstream (each is held there
        # 300 ms), not after a fixed pause.
        for _ in range(2000):
            if up.requests == 300:
                break
            await asyncio.sleep(0.01)
        assert up.requests == 300, "every call reached the upstream before the reload"
        report = tg.reload(policy(up, budget(2)))
        assert report.generation == 2
        assert report.kept == ["rpm"]
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed == []

    asyncio.run(main())
    assert up.requests == 300
    # The new limit: 2 a minute, with the 300 already counted against it.
    denied = 0
    for _ in range(3):
        try:
            tg.send(chat())
        except DeniedError as e:
            assert e.budget == "rpm"
            denied += 1
    assert denied >= 1
    tg.close()


def test_no_model_is_an_invalid_request(up, engine):
    tg = engine()
    with pytest.raises(InvalidRequestError):
        tg.send({"messages": []})
    assert up.requests == 0
