"""Token counts and long texts split by exact tokens: offsets that index Python strings (also
past non-ASCII text), counts equal to the engine's, overlap, the policy's model table, the count
the upstream bills, and bad input."""

from __future__ import annotations

import random

import pytest
from conftest import chat

import tollgate
from tollgate import Chunk, InvalidRequestError, count_tokens, split_text

PARAGRAPHS = [
    "Rate limits protect the upstream. A client that ignores them meets 429s and retry storms.",
    "令牌桶算法以固定速率向桶中添加令牌。请求到达时取走令牌，桶空时请求等待或被拒绝。",
    "Emoji count too: 🚦🚦🚦 stop, 🟢 go. Ünïcödé wörds are split on their boundaries.",
    "GCRA keeps one timestamp per key; it is the token bucket written as arithmetic.",
]


def corpus(n: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    return "\n\n".join(" ".join(rng.choice(PARAGRAPHS) for _ in range(rng.randint(1, 4))) for _ in range(n))


def check_chunks(text: str, chunks: list, max_tokens: int, model: str = "gpt-4o") -> None:
    assert chunks
    for c in chunks:
        assert isinstance(c, Chunk)
        assert text[c.start : c.end] == c.text, "offsets index the Python string"
        assert 0 < c.tokens <= max_tokens
        assert count_tokens(model, c.text) == (c.tokens, True), "each chunk counted on its own text"
    assert "".join(c.text[c.overlap :] for c in chunks) == text
    assert chunks[0].start == 0 and chunks[-1].end == len(text)


def test_split_cuts_at_boundaries_with_exact_counts_and_python_offsets():
    text = corpus(40)
    assert len(text.encode()) > len(text), "the text is not ASCII: byte and str offsets differ"
    chunks = split_text("gpt-4o", text, 60)
    check_chunks(text, chunks, 60)
    assert len(chunks) > 5
    assert all(c.overlap == 0 for c in chunks)
    assert "".join(c.text for c in chunks) == text
    assert all(c.exact for c in chunks)
    # Paragraphs that fit are never cut: with each under the limit, every chunk ends at one.
    rng = random.Random(11)
    short = "\n\n".join(rng.choice(PARAGRAPHS) for _ in range(60))
    assert all(count_tokens("gpt-4o", p).tokens < 60 for p in PARAGRAPHS)
    pieces = split_text("gpt-4o", short, 60)
    check_chunks(short, pieces, 60)
    assert all(c.text.endswith("\n\n") for c in pieces[:-1])


def test_split_with_overlap_repeats_the_end_of_the_previous_chunk():
    text = corpus(30, seed=3)
    chunks = split_text("gpt-4o", text, 50, overlap=10)
    check_chunks(text, chunks, 50)
    assert chunks[0].overlap == 0
    assert all(c.overlap > 0 for c in chunks[1:])
    for prev, c in zip(chunks, chunks[1:]):
        assert c.start < prev.end
        assert prev.text.endswith(c.text[: c.overlap])


def test_the_engine_splits_and_counts_with_its_policys_model_table(up, engine):
    tg = engine('[models]\nmy-model = { encoding = "cl100k_base", context_window = 4096 }\n')
    text = corpus(10)
    chunks = tg.split_text("my-model", text, 40)
    assert "".join(c.text for c in chunks) == text
    assert all(c.exact and c.tokens <= 40 for c in chunks)
    assert [c.tokens for c in chunks] == [tg.count_tokens("my-model", c.text).tokens for c in chunks]
    assert tg.split_text("my-model", text, 40) == split_text("gpt-4", text, 40), "cl100k, like gpt-4"
    assert tg.context_window("my-model") == 4096
    assert tg.context_window("nobody-knows") is None
    with pytest.raises(InvalidRequestError) as info:
        split_text("my-model", text, 40)
    assert info.value.code == "unknown_model", "the bundled table does not know the policy's model"
    with pytest.raises(InvalidRequestError) as window:
        tg.split_text("my-model", text, 5000)
    assert window.value.code == "exceeds_context_window"


def test_count_request_is_the_prompt_the_upstream_bills(up, engine):
    tg = engine()
    request = chat("How many tokens is this prompt, counted exactly?")
    r = tg.send(request)
    count = tg.count_request(request)
    assert count.exact
    assert count.tokens == r.usage.prompt_tokens
    assert count_tokens("gpt-4o", "hello world") == (2, True)
    guess = count_tokens("qwen-max", "hello world")
    assert not guess.exact and guess.tokens >= 2


def test_bad_input_is_refused_with_a_stable_code(up, engine):
    for call, code in (
        (lambda: split_text("gpt-4o", "some text", 0), "zero_max"),
        (lambda: split_text("gpt-4o", "some text", 10, overlap=10), "overlap_too_large"),
        (lambda: split_text("gpt-4o", "some text", 10_000_000), "exceeds_context_window"),
        (lambda: split_text("no-such-model", "some text", 10), "unknown_model"),
        (lambda: split_text("gpt-4o", "", 10), "empty"),
        (lambda: split_text("gpt-4o", "x", 10, overlap=-1), "invalid_argument"),
        (lambda: count_tokens("no-such-model", "text"), "unknown_model"),
        (lambda: engine().count_request(b"{not json"), "invalid_request"),
        (lambda: engine().count_request({"messages": []}), "invalid_request"),
    ):
        with pytest.raises(InvalidRequestError) as info:
            call()
        assert info.value.code == code, (code, info.value)
        assert str(info.value)
    with pytest.raises(TypeError):
        split_text("gpt-4o", b"bytes", 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        split_text("gpt-4o", "text", 10.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        count_tokens("gpt-4o", None)  # type: ignore[arg-type]
    # A lone surrogate cannot be UTF-8: refused by the conversion, clearly.
    with pytest.raises(UnicodeEncodeError):
        split_text("gpt-4o", "a\ud800b", 10)
