"""Batch runs against the test upstream: every request once under a budget that makes them wait,
the journal (resume after a stop and after SIGKILL, recorded results handed out first, another
input refused, damaged, in use), bad requests as invalid_line results, and asyncio."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Iterator, List

import pytest
from conftest import policy

import tollgate
from tollgate import BatchResult, InvalidRequestError, JournalError

QUEUEING = '[[budget]]\nname = "g"\nrequests_per_second = 1000\nburst = 20\n'


def line(i: int, **extra: Any) -> Dict[str, Any]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"label item {i}"}], "max_tokens": 4}
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body, **extra}


def requests(n: int) -> Iterator[Dict[str, Any]]:
    return (line(i) for i in range(1, n + 1))


def each_once(results: List[BatchResult], n: int) -> None:
    ids = Counter(r.custom_id for r in results)
    assert len(ids) == n and set(ids.values()) == {1}, ids.most_common(3)
    assert set(ids) == {f"req-{i}" for i in range(1, n + 1)}


def test_every_request_once_through_a_budget_that_makes_them_wait(up, engine):
    tg = engine(QUEUEING)
    results = tg.batch(requests(2000), concurrency=32).results()
    each_once(results, 2000)
    assert all(r.ok for r in results), Counter(r.status for r in results)
    assert up.requests == 2000
    r = results[0]
    assert r.response is not None and r.response["status_code"] == 200
    assert r.body["object"] == "chat.completion"
    assert r.usage is not None and r.usage["completion_tokens"] == 4
    assert r.attempts == 1 and not r.recorded and r.error is None
    assert r.output["custom_id"] == r.custom_id and "response" in r.output
    b = tg.stats()["budgets"][0]
    assert b["waited"] + b["denied"] > 0, f"the budget made calls wait: {b}"


def test_a_stopped_run_resumes_from_its_journal_and_hands_recorded_results_out_first(up, engine, tmp_path):
    tg = engine()
    journal = tmp_path / "journal"
    first: List[BatchResult] = []
    with tg.batch(requests(300), journal=journal, concurrency=8) as run:
        for r in run:
            first.append(r)
            if len(first) == 50:
                break
    sent_first = up.requests
    assert 50 <= sent_first < 300
    second = tg.batch(requests(300), journal=journal, concurrency=8).results()
    each_once(second, 300)
    recorded = [r for r in second if r.recorded]
    assert len(recorded) >= 50
    assert second[: len(recorded)] == recorded, "recorded results come first"
    assert {r.custom_id for r in first} <= {r.custom_id for r in recorded}
    assert up.requests <= 300 + 8, f"{up.requests} arrivals: at most the calls in flight at the stop again"
    assert up.requests - sent_first == 300 - len(recorded)
    # A third run sends nothing.
    before = up.requests
    third = tg.batch(requests(300), journal=journal).results()
    each_once(third, 300)
    assert all(r.recorded for r in third) and up.requests == before


CHILD = """
import sys, tollgate
base, journal = sys.argv[1], sys.argv[2]
tg = tollgate.Tollgate('version = 1\\n[[upstream]]\\nname = "test"\\nbase_url = "' + base + '"\\n')
reqs = ({"custom_id": f"req-{i}", "body": {"model": "gpt-4o", "max_tokens": 4,
         "messages": [{"role": "user", "content": f"label item {i}"}]}} for i in range(1, 601))
for r in tg.batch(reqs, journal=journal, concurrency=8):
    print(r.custom_id, flush=True)
"""


@pytest.mark.parametrize("kill_after", [0, 40, 400])
def test_a_run_killed_with_sigkill_resumes_without_paying_twice(make_up, tmp_path, kill_after):
    up = make_up(latency_ms=2)
    journal = tmp_path / "journal"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, up.base_url, str(journal)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    seen = 0
    deadline = time.monotonic() + 60
    while seen < kill_after and time.monotonic() < deadline:
        if child.stdout.readline():
            seen += 1
    if kill_after == 0:
        while up.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    arrivals = up.requests
    for _ in range(40):  # requests already in the socket buffers still arrive: wait until none do
        time.sleep(0.05)
        if up.requests == arrivals:
            break
        arrivals = up.requests
    tg = tollgate.Tollgate(policy(up))
    results = tg.batch(({"custom_id": f"req-{i}", "body": {"model": "gpt-4o", "max_tokens": 4,
                         "messages": [{"role": "user", "content": f"label item {i}"}]}} for i in range(1, 601)),
                       journal=journal, concurrency=8).results()
    each_once(results, 600)
    recorded = sum(r.recorded for r in results)
    assert recorded >= seen
    assert up.requests - arrivals == 600 - recorded, "only what had no recorded answer is sent again"
    assert up.requests <= 600 + 8 + 8, f"{up.requests} arrivals for 600 requests"
    tg.close()


def test_bad_requests_are_invalid_line_results_and_the_run_goes_on(up, engine, tmp_path):
    tg = engine()
    items: List[Any] = [
        line(1),
        "{not json",
        {"body": line(3)["body"]},
        line(4),
        line(4),
        line(6, body={"model": "gpt-4o", "messages": [], "stream": True}),
        line(7, url="/v1/embeddings"),
        json.dumps(line(8)).encode(),
    ]
    run = tg.batch(items, journal=tmp_path / "j")
    results = sorted(run.results(), key=lambda r: r.seq)
    assert [r.status for r in results] == ["ok", "invalid_line", "invalid_line", "ok", "invalid_line",
                                           "invalid_line", "invalid_line", "ok"]
    assert run.counts.queued == 3 and run.counts.invalid == 5
    bad = {r.seq: r for r in results if not r.ok}
    assert "not a JSON object" in bad[2].error["message"]
    assert "custom_id" in bad[3].error["message"]
    assert "duplicate" in bad[5].error["message"]
    assert "stream" in bad[6].error["message"]
    assert bad[7].custom_id == "req-7" and "url" in bad[7].error["message"]
    assert all(r.error["code"] == "invalid_line" and r.attempts == 0 for r in bad.values())
    assert up.requests == 3
    with pytest.raises(TypeError):
        tg.batch([42]).results()  # type: ignore[list-item]
    with pytest.raises(InvalidRequestError):
        tg.batch([], concurrency=0)


def test_the_journal_refuses_another_input_a_second_batch_and_a_damaged_file(up, engine, tmp_path):
    tg = engine()
    journal = tmp_path / "j"
    tg.batch(requests(5), journal=journal).results()
    other = (line(i + 100) for i in range(1, 6))
    with pytest.raises(JournalError) as info:
        tg.batch(other, journal=journal).results()
    assert "not the input the journal belongs to" in str(info.value)
    # One batch at a time per journal: the first holds it while its input is open.
    release = threading.Event()

    def held() -> Iterator[Dict[str, Any]]:
        release.wait(30)
        yield line(1)

    holder = tg.batch(held(), journal=tmp_path / "busy")
    try:
        with pytest.raises(JournalError) as busy:
            tg.batch([], journal=tmp_path / "busy")
        assert "in use" in str(busy.value)
    finally:
        release.set()
    assert [r.custom_id for r in holder] == ["req-1"]
    # A damaged file: a clear error saying what to do, never a silent fresh start.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "journal.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError) as bad:
        tg.batch(requests(1), journal=damaged)
    assert "move it aside" in str(bad.value)


def test_asyncio_batch_from_an_async_generator_and_a_stop(up, engine, tmp_path):
    tg = engine(QUEUEING)

    async def gen(n: int) -> AsyncIterator[Dict[str, Any]]:
        for i in range(1, n + 1):
            if i % 50 == 0:
                await asyncio.sleep(0)
            yield line(i)

    async def main() -> None:
        results = await tg.abatch(gen(500), concurrency=16).results()
        each_once(results, 500)
        assert all(r.ok for r in results)
        # Stopped after 20: resumed with a journal, each id once.
        journal = tmp_path / "aj"
        got = 0
        async with tg.abatch(gen(200), journal=journal, concurrency=4) as run:
            async for _ in run:
                got += 1
                if got == 20:
                    break
        rest = await tg.abatch(requests(200), journal=journal).results()
        each_once(rest, 200)
        assert sum(r.recorded for r in rest) >= 20

    asyncio.run(main())
    assert up.requests <= 500 + 200 + 4


def test_an_input_that_fails_stops_the_batch_and_raises_at_the_end(up, engine, tmp_path):
    tg = engine()

    def broken() -> Iterator[Dict[str, Any]]:
        yield line(1)
        yield line(2)
        raise RuntimeError("the source went away")

    run = tg.batch(broken(), journal=tmp_path / "b")
    got: List[BatchResult] = []
    with pytest.raises(RuntimeError, match="went away"):
        for r in run:
            got.append(r)
    assert {r.custom_id for r in got} <= {"req-1", "req-2"}
    resumed = tg.batch(requests(3), journal=tmp_path / "b").results()
    each_once(resumed, 3)
    assert os.path.isdir(Path(tmp_path / "b"))
