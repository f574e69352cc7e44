"""Budgets kept in Redis from asyncio: shared between engines (as between processes), and the
event loop keeps running while Redis is slow. Needs `redis-server` on the PATH (.ci/run
installs it); each test starts its own on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from conftest import chat

import tollgate
from tollgate import DeniedError


def policy(url: str, base: str, rpm: int, extra: str = "") -> str:
    return f"""version = 1
[[upstream]]
name = "test"
base_url = "{base}"
[redis]
url = "{url}"
key_prefix = "python"
on_failure = "fail_closed"
{extra}
[[budget]]
name = "fleet"
scope = ["tenant"]
requests_per_minute = {rpm}
store = "redis"
"""


def test_a_redis_budget_is_shared_between_engines_from_asyncio(redis, up):
    url, _ = redis
    a = tollgate.Tollgate(policy(url, up.base_url, 3, 'op_timeout = "5s"'))
    b = tollgate.Tollgate(policy(url, up.base_url, 3, 'op_timeout = "5s"'))

    async def main() -> None:
        first = await a.aadmit("gpt-4o", tenant="acme", prompt_tokens=10)
        assert first.kind == "go" and first.permit is not None
        assert first.permit.info()["budgets"] == [["fleet", "tenant=acme"]]  # type: ignore[index]
        a.settle(first.permit, status=200)
        r = await b.asend(chat(), tenant="acme")
        assert r.status == 200
        assert a.send(chat(), tenant="acme").status == 200, "the sync send shares the budget"
        with pytest.raises(DeniedError) as info:
            await b.asend(chat(), tenant="acme")
        assert info.value.budget == "fleet"
        assert info.value.code == "budget_exhausted"
        assert (await a.aadmit("gpt-4o", tenant="globex", prompt_tokens=1)).kind == "go"

    asyncio.run(main())
    assert up.requests == 2
    a.close()
    b.close()


def test_the_event_loop_runs_while_redis_does_not_answer(redis, up):
    url, proc = redis
    tg = tollgate.Tollgate(policy(url, up.base_url, 100, 'op_timeout = "30s"'))

    async def main() -> None:
        assert (await tg.asend(chat(), tenant="acme")).status == 200
        os.kill(proc.pid, signal.SIGSTOP)  # Redis stops answering (until SIGCONT)
        pending = asyncio.create_task(tg.asend(chat(), tenant="acme"))
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        # A call that blocked the loop on Redis would have held it until the op_timeout and
        # be over by now; this one is still waiting while the loop ran.
        assert ticks == 5
        assert not pending.done()
        os.kill(proc.pid, signal.SIGCONT)
        r = await asyncio.wait_for(pending, timeout=30)
        assert r.status == 200

    asyncio.run(main())
    assert up.requests == 2
    tg.close()


def test_fail_closed_denies_with_store_unavailable_when_redis_is_gone(redis, up):
    url, proc = redis
    tg = tollgate.Tollgate(policy(url, up.base_url, 100, 'op_timeout = "200ms"'))

    async def main() -> None:
        assert (await tg.asend(chat(), tenant="acme")).status == 200
        os.kill(proc.pid, signal.SIGSTOP)
        with pytest.raises(DeniedError) as info:
            await tg.asend(chat(), tenant="acme")
        assert info.value.code == "store_unavailable"
        os.kill(proc.pid, signal.SIGCONT)
        for _ in range(500):
            d = await tg.aadmit("gpt-4o", tenant="acme", prompt_tokens=1)
            if d.kind == "go":
                break
            await asyncio.sleep(0.02)
        assert d.kind == "go", "back once Redis answers"
        assert d.permit is not None and d.permit.release()

    asyncio.run(main())
    assert up.requests == 1
    tg.close()
