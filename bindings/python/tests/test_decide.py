"""The decide API: admit / settle, retry verdicts, acquire and aacquire."""

from __future__ import annotations

import asyncio

import pytest
from conftest import policy

import tollgate
from tollgate import DeniedError, InvalidRequestError

RPM2 = '[[budget]]\nname = "rpm"\nscope = ["tenant"]\nrequests_per_minute = 2\n'


def test_admit_settle_and_deny(up, engine):
    tg = engine(RPM2)
    d = tg.admit("gpt-4o", tenant="acme", prompt="hello there", max_tokens=10)
    assert d.kind == "go" and d.permit is not None
    info = d.permit.info()
    assert info is not None and info["budgets"] == [["rpm", "tenant=acme"]]
    assert info["completion_allowance"] == 10
    v = tg.settle(d.permit, status=200, usage={"prompt_tokens": 3, "completion_tokens": 4})
    assert v.kind == "done"
    assert v.settlement.tokens == 7
    assert d.permit.settled
    with pytest.raises(InvalidRequestError, match="settled or released already"):
        tg.settle(d.permit, status=200)
    released = tg.admit("gpt-4o", tenant="acme", prompt_tokens=1)
    assert released.permit is not None and released.permit.release(), "given back: not counted"
    second = tg.admit("gpt-4o", tenant="acme", prompt_tokens=1)
    assert second.kind == "go" and second.permit is not None
    tg.settle(second.permit, status=200)
    third = tg.admit("gpt-4o", tenant="acme", prompt_tokens=1)
    assert third.kind == "deny"
    assert isinstance(third.error, DeniedError)
    assert third.error.budget == "rpm"
    assert third.error.retry_after is not None and third.error.retry_after > 0


def test_a_bad_outcome_leaves_the_permit_unsettled(up, engine):
    tg = engine()
    d = tg.admit("gpt-4o", prompt_tokens=5)
    assert d.permit is not None
    with pytest.raises(InvalidRequestError, match="not a failure code"):
        tg.settle(d.permit, failure="teapot")
    assert not d.permit.settled
    assert tg.settle(d.permit, status=200).kind == "done"


def test_a_503_verdict_is_a_retry_whose_attempt_admits_the_next_try(up, engine):
    tg = engine('[retry]\nbackoff = { base = "10ms", max = "20ms" }\n')
    d = tg.admit("gpt-4o", prompt_tokens=5)
    assert d.permit is not None
    v = tg.settle(d.permit, status=503)
    assert v.kind == "retry"
    assert v.after is not None and v.after >= 0
    assert v.attempt is not None and v.attempt.number == 2
    retry = tg.admit("gpt-4o", prompt_tokens=5, attempt=v.attempt)
    assert retry.kind == "go" and retry.permit is not None
    assert retry.permit.info()["attempt"] == 2  # type: ignore[index]
    assert tg.settle(retry.permit, status=200).kind == "done"
    d = tg.admit("gpt-4o", prompt_tokens=5)
    assert d.permit is not None
    gave_up = tg.settle(d.permit, status=400)
    assert gave_up.kind == "give_up"
    assert isinstance(gave_up.error, tollgate.GaveUpError)


def test_acquire_waits_for_a_slot_and_aacquire_can_be_cancelled(up, engine):
    tg = engine('[[budget]]\nname = "one"\nconcurrency = 1\nwhen_exhausted = { wait_up_to = "10s" }\n')
    held = tg.acquire("gpt-4o", prompt_tokens=1)

    async def main() -> None:
        waiting = asyncio.create_task(tg.aacquire("gpt-4o", prompt_tokens=1))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "the second call waits for the slot"
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # The first permit goes back: a new aacquire gets the slot.
        assert held.release()
        p = await asyncio.wait_for(tg.aacquire("gpt-4o", prompt_tokens=1), timeout=5)
        assert tg.settle(p, status=200).kind == "done"
        d = await tg.aadmit("gpt-4o", prompt_tokens=1)
        assert d.kind == "go" and d.permit is not None and d.permit.release()

    asyncio.run(main())


def test_acquire_raises_the_denial(up, engine):
    tg = engine('[[budget]]\nname = "rpm"\nrequests_per_minute = 1\n')
    p = tg.acquire("gpt-4o", prompt_tokens=1)
    tg.settle(p, status=200)
    with pytest.raises(DeniedError):
        tg.acquire("gpt-4o", prompt_tokens=1)
    with pytest.raises(TypeError, match="model must be a str"):
        tg.admit(5)  # type: ignore[arg-type]
