"""Batch runs (:meth:`Tollgate.batch`, :meth:`Tollgate.abatch`): many chat requests through the
engine with a durable journal, the Rust core's ``tollgate::batch`` (what ``tollgate batch`` runs
over a file).

Requests are OpenAI Batch API lines (``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}``, plus tollgate's ``tenant`` and ``priority``), as dicts
or JSON text; results carry the Batch API's output line (``custom_id``, ``response`` with
``status_code`` and ``body``, ``error``) plus ``usage``, ``cost`` and ``attempts``. Every call
goes through the engine (budgets — a batch waits for room rather than failing, at a low queue
priority —, retries, fallbacks, cache), at most ``concurrency`` at once. With a journal (a
directory), a rerun after a crash or a stop sends no request whose answer was recorded and hands
every recorded result out first: each ``custom_id`` comes out once per run.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, AsyncIterable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Union

from ._errors import TollgateError, from_native
from ._native import NativeError

BatchItem = Union[Mapping[str, Any], str, bytes]
"""One request of a batch: a Batch API line as a dict, or its JSON text."""


class BatchResult(NamedTuple):
    """One request's result."""

    custom_id: Optional[str]
    """The request's ``custom_id`` (None for an item without a usable one)."""
    status: str
    """``ok``, or the error's code (``gave_up``, ``denied``, ``invalid_line``, ...)."""
    response: Optional[Dict[str, Any]]
    """``{"status_code", "request_id", "body"}`` when an answer came."""
    error: Optional[Dict[str, Any]]
    """``{"code", "message", ...}`` when the request failed."""
    usage: Optional[Dict[str, Any]]
    """Token usage in OpenAI's names."""
    cost: Optional[float]
    """What the call cost, when the model has a price."""
    attempts: int
    """Attempts made (0 for an item never sent)."""
    model: Optional[str]
    """The request's model."""
    latency_ms: float
    """Wall time of the call."""
    seq: int
    """The request's place in the input (1 for the first): the journal's key."""
    recorded: bool
    """True when the journal recorded it in an earlier run (not sent again)."""
    output: Dict[str, Any]
    """The whole output line (Batch API output format): ``json.dumps(r.output)`` is what
    ``tollgate batch`` writes to its output file."""

    @property
    def ok(self) -> bool:
        """Whether the call answered with a success."""
        return self.status == "ok"

    @property
    def body(self) -> Optional[Any]:
        """The answer's body (the ``chat.completion``), when one came."""
        return None if self.response is None else self.response.get("body")


class BatchProgress(NamedTuple):
    """What a running batch is doing."""

    in_flight: int
    """Calls started and not yet answered."""
    refused_for_now: int
    """Of those, calls a budget refused for now, waiting to ask again."""
    answered_before: int
    """Requests the journal recorded before this run."""


def _result(text: str) -> BatchResult:
    r = json.loads(text)
    out: Dict[str, Any] = json.loads(r["output"])
    return BatchResult(
        custom_id=r.get("custom_id"),
        status=r["status"],
        response=out.get("response"),
        error=out.get("error"),
        usage=out.get("usage"),
        cost=out.get("cost"),
        attempts=int(out.get("attempts") or 0),
        model=r.get("model"),
        latency_ms=float(r["latency_ms"]),
        seq=int(r["seq"]),
        recorded=bool(r["recorded"]),
        output=out,
    )


def _line(item: BatchItem) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    if isinstance(item, Mapping):
        try:
            return json.dumps(item)
        except (TypeError, ValueError) as e:
            raise TypeError(f"a batch request cannot be sent as JSON: {e}") from None
    raise TypeError(
        "a batch request must be a dict (an OpenAI Batch API line: custom_id, body) or its JSON "
        f"text, not {type(item).__name__}"
    )


class _Counts:
    def __init__(self) -> None:
        self.queued = 0
        self.already_answered = 0
        self.invalid = 0


class BatchRun:
    """A running batch, iterated for its results (``for r in tg.batch(requests, ...)``): the
    journal's recorded results first, then each new one once the journal committed it. A thread
    feeds the requests (waiting while ``concurrency`` are queued). :meth:`close`, or leaving a
    ``with`` block (also by ``break``), stops it: no new request is taken, calls in flight get the
    grace period; a rerun with the same journal goes on from there. A bare ``for`` loop left by
    ``break`` does not stop it: the batch runs to its end, its results kept in the journal."""

    def __init__(self, native: Any, requests: Iterable[BatchItem]) -> None:
        self._native = native
        self._error: Optional[BaseException] = None
        self._over = False
        self._stopping = False
        self.counts = _Counts()
        """Requests queued, skipped (answered in an earlier run) and refused as invalid so far."""
        self._thread = threading.Thread(
            target=self._feed, args=(iter(requests),), name="tollgate-batch-feeder", daemon=True
        )
        self._thread.start()

    def _feed(self, requests: Iterator[BatchItem]) -> None:
        try:
            for seq, item in enumerate(requests, 1):
                if self._stopping:
                    break
                what = self._native.submit(seq, _line(item))
                if what == "stopped":
                    break
                _count(self.counts, what)
        except NativeError as e:
            self._error = from_native(e)
            self._native.stop()
        except BaseException as e:  # the caller's iterable failed: stop, and say so at the end
            self._error = e
            self._native.stop()
        finally:
            try:
                self._native.finish()
            except NativeError as e:
                self._error = self._error or from_native(e)

    def __iter__(self) -> "BatchRun":
        return self

    def __next__(self) -> BatchResult:
        if self._over:
            raise StopIteration
        try:
            text = self._native.next()
        except NativeError as e:
            raise from_native(e) from None
        if text is None:
            self._over = True
            self._thread.join()
            if self._error is not None:
                raise self._error
            raise StopIteration
        return _result(text)

    def results(self) -> List[BatchResult]:
        """Every result, once the batch is over."""
        return list(self)

    @property
    def progress(self) -> BatchProgress:
        """What the batch is doing now."""
        return BatchProgress(*self._native.progress())

    def stop(self) -> None:
        """Stops taking requests; calls in flight get the grace period. Iterating goes on until
        their results are out."""
        self._stopping = True
        self._native.stop()

    def close(self) -> None:
        """Stops the batch and waits for it to end (at most the grace period)."""
        self.stop()
        self._thread.join()
        self._over = True

    def __enter__(self) -> "BatchRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count(counts: _Counts, what: str) -> None:
    if what == "queued":
        counts.queued += 1
    elif what == "already_answered":
        counts.already_answered += 1
    elif what == "invalid_line":
        counts.invalid += 1


class AsyncBatchRun:
    """A running batch for asyncio (``async for r in tg.abatch(requests, ...)``); see
    :class:`BatchRun`. The requests may be an iterable or an async iterable; a task feeds
    them. ``aclose()`` or leaving an ``async with`` block stops it."""

    def __init__(self, native: Any, requests: Union[Iterable[BatchItem], AsyncIterable[BatchItem]]) -> None:
        self._native = native
        self._requests = requests
        self._feeder: Optional["asyncio.Task[None]"] = None
        self._over = False
        self._stopping = False
        self.counts = _Counts()
        """Requests queued, skipped (answered in an earlier run) and refused as invalid so far."""

    async def _submit(self, seq: int, item: BatchItem) -> bool:
        from ._core import _native_call

        what: str = await _native_call(self._native.submit_async, seq, _line(item))
        _count(self.counts, what)
        return what != "stopped" and not self._stopping

    async def _feed(self) -> None:
        from ._core import _native_call

        try:
            seq = 0
            if isinstance(self._requests, AsyncIterable):
                async for item in self._requests:
                    seq += 1
                    if not await self._submit(seq, item):
                        break
            else:
                for item in self._requests:
                    seq += 1
                    if not await self._submit(seq, item):
                        break
        except BaseException:
            self._native.stop()
            raise
        finally:
            await _native_call(self._native.finish_async)

    def __aiter__(self) -> "AsyncBatchRun":
        return self

    async def __anext__(self) -> BatchResult:
        from ._core import _native_call

        if self._over:
            raise StopAsyncIteration
        if self._feeder is None:
            self._feeder = asyncio.ensure_future(self._feed())
        recorded = self._native.next_recorded()
        if recorded is not None:
            return _result(recorded)
        text = await _native_call(self._native.next_async)
        if text is None:
            self._over = True
            await self._feeder  # raises what stopped the feeder (a journal error, the input's)
            raise StopAsyncIteration
        return _result(text)

    async def results(self) -> List[BatchResult]:
        """Every result, once the batch is over."""
        return [r async for r in self]

    @property
    def progress(self) -> BatchProgress:
        """What the batch is doing now."""
        return BatchProgress(*self._native.progress())

    def stop(self) -> None:
        """Stops taking requests (see :meth:`BatchRun.stop`)."""
        self._stopping = True
        self._native.stop()

    async def aclose(self) -> None:
        """Stops the batch and waits for it to end (at most the grace period)."""
        self.stop()
        self._over = True
        if self._feeder is None:
            from ._core import _native_call

            await _native_call(self._native.finish_async)
        else:
            try:
                await self._feeder
            except TollgateError:
                pass

    async def __aenter__(self) -> "AsyncBatchRun":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
