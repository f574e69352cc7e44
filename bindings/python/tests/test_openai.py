"""The official openai SDK through tollgate's httpx transports: plain, streamed, denied (a
RateLimitError the SDK does not retry), a 503 retried by tollgate invisibly, and asyncio."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from conftest import policy

import tollgate

MESSAGES = [{"role": "user", "content": "hello there"}]


def client(tg: tollgate.Tollgate, **options) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="unused-the-policy-holds-keys",
        base_url="http://tollgate.invalid/v1",
        http_client=httpx.Client(transport=tg.transport(**options)),
    )


def test_the_sdk_sends_through_tollgate(up, engine):
    tg = engine()
    c = client(tg, tenant="acme")
    r = c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=8)
    assert len(r.choices[0].message.content.split()) == 8
    assert r.usage.completion_tokens == 8
    assert up.requests == 1
    assert up.log()[0]["path"] == "/v1/chat/completions"


def test_the_sdk_streams_event_by_event(make_up):
    up = make_up(drip_ms=2)
    with tollgate.Tollgate(policy(up)) as tg:
        c = client(tg)
        text = ""
        chunks = 0
        for chunk in c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=12, stream=True):
            chunks += 1
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        assert chunks >= 3
        assert len(text.split()) == 12


def test_a_denial_is_a_rate_limit_error_the_sdk_does_not_retry(up, engine):
    tg = engine('[[budget]]\nname = "per-tenant"\nscope = ["tenant"]\nrequests_per_minute = 1\n')
    c = client(tg, tenant="acme")
    c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=8)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=8)
    e = info.value
    assert e.response.headers["x-should-retry"] == "false"
    assert int(e.response.headers["retry-after"]) >= 1
    assert e.code == "budget_exhausted"
    # One denial: the SDK (max_retries 2 by default) did not try again.
    assert tg.stats()["budgets"][0]["denied"] == 1
    assert up.requests == 1


def test_a_503_is_retried_by_tollgate_invisibly(up, engine):
    up.script(["status_503"])
    tg = engine('[retry]\nbackoff = { base = "10ms", max = "20ms" }\n')
    c = client(tg)
    r = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, max_tokens=8)
    assert r.headers["x-tollgate-attempts"] == "2"
    assert r.parse().choices[0].message.content
    assert up.count_status(503) == 1
    assert up.requests == 2


def test_an_upstream_error_given_up_reaches_the_sdk_unretried(up, engine):
    up.script([{"kind": "status", "status": 400}])
    tg = engine()
    c = client(tg)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=8)
    assert up.requests == 1


def test_other_requests_need_a_fallback(up, engine):
    tg = engine()
    with pytest.raises(openai.NotFoundError):
        client(tg).models.list()
    seen = []

    def fallback(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"object": "list", "data": []})

    c = openai.OpenAI(
        api_key="k",
        base_url="http://tollgate.invalid/v1",
        http_client=httpx.Client(transport=tg.transport(fallback=httpx.MockTransport(fallback))),
    )
    assert list(c.models.list()) == []
    assert seen == ["/v1/models"]


def test_the_async_sdk_sends_and_streams_through_tollgate(make_up):
    up = make_up(drip_ms=2)
    with tollgate.Tollgate(policy(up, '[[budget]]\nname = "rpm"\nrequests_per_minute = 3\n')) as tg:

        async def main() -> None:
            c = openai.AsyncOpenAI(
                api_key="unused",
                base_url="http://tollgate.invalid/v1",
                http_client=httpx.AsyncClient(transport=tg.async_transport(tenant="acme")),
            )
            r = await c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=8)
            assert len(r.choices[0].message.content.split()) == 8
            text = ""
            stream = await c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=6, stream=True)
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
            assert len(text.split()) == 6
            results = await asyncio.gather(
                *(c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2) for _ in range(3)),
                return_exceptions=True,
            )
            denied = [r for r in results if isinstance(r, openai.RateLimitError)]
            assert len(denied) == 2, results

        asyncio.run(main())
        assert up.requests == 3


def test_a_stream_cut_mid_answer_reaches_the_sdk_as_an_error(up, engine):
    up.script([{"kind": "cut_stream_after", "n": 2}], stream=True)
    tg = engine()
    c = client(tg)
    seen = 0
    with pytest.raises(openai.APIError, match="broke off"):
        for _ in c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=50, stream=True):
            seen += 1
    assert seen >= 1, "content arrived before the cut"
    assert up.requests == 1, "not retried once content was delivered"
