"""The engine (:class:`Tollgate`), the call API's answers and streams, and the decide API."""

from __future__ import annotations

import asyncio
import collections
import datetime
import itertools
import json
import os
import weakref
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    TYPE_CHECKING,
    Literal,
    TypedDict,
    Union,
)

from . import _native
from ._errors import ClosedError, InvalidRequestError, PolicyError, TollgateError, from_info, from_native
from ._native import NativeError

if TYPE_CHECKING:
    from ._batch import AsyncBatchRun, BatchItem, BatchRun
    from ._conversation import Chunk, Conversation, RedisMessageStore, TokenCount
    from .httpx import AsyncTollgateTransport, TollgateTransport

Request = Union[Mapping[str, Any], str, bytes]
"""An OpenAI chat-completions request: a dict, or its JSON as str or bytes."""

Seconds = Union[float, int, datetime.timedelta]
"""A duration: seconds, or a ``datetime.timedelta``."""

CacheMode = Literal["default", "force", "bypass"]


class Usage(NamedTuple):
    """Token usage."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_prompt_tokens: int
    reasoning_tokens: int


class Cost(NamedTuple):
    """A cost split by kind, in the currency of the price table."""

    input: float
    cached_input: float
    output: float
    total: float


class Settlement(NamedTuple):
    """What a settled call was charged."""

    reserved_tokens: int
    tokens: int
    spend: float
    usage: Optional[Usage]
    cost: Optional[Cost]


class Target(NamedTuple):
    """Where an attempt went (routed calls)."""

    route: str
    upstream: str
    model: str
    key: str


class AttemptRecord(NamedTuple):
    """One finished attempt of a call."""

    number: int
    target: Optional[Target]
    outcome: str
    decision: str


class ReloadReport(NamedTuple):
    """What a reload changed."""

    generation: int
    added: List[str]
    kept: List[str]
    removed: List[str]
    rescoped: List[str]


class BudgetStats(TypedDict):
    """Counters of one budget."""

    name: str
    admitted: int
    waited: int
    denied: int
    tokens: int
    spend: float
    keys: int


class CacheStats(TypedDict):
    """Cache counters."""

    hits: int
    misses: int
    stale_hits: int
    inserts: int
    refused: int
    evictions: int
    expired: int
    bytes: int
    entries: int


class Stats(TypedDict):
    """What :meth:`Tollgate.stats` reports."""

    generation: int
    budgets: List[BudgetStats]
    cache: CacheStats


class StreamEvent(NamedTuple):
    """A server-sent event as the upstream sent it (``[DONE]`` included)."""

    data: str
    event: Optional[str]
    id: Optional[str]


def _usage(u: Optional[Sequence[int]]) -> Optional[Usage]:
    return None if u is None else Usage(*u)


def _settlement(s: Optional[Dict[str, Any]]) -> Optional[Settlement]:
    if s is None:
        return None
    cost = s.get("cost")
    return Settlement(
        s["reserved_tokens"],
        s["tokens"],
        s["spend"],
        _usage(s.get("usage")),
        None if cost is None else Cost(*cost),
    )


def _target(t: Optional[Sequence[str]]) -> Optional[Target]:
    return None if t is None else Target(*t)


def _history(h: Sequence[Dict[str, Any]]) -> List[AttemptRecord]:
    return [AttemptRecord(a["number"], _target(a.get("target")), a["outcome"], a["decision"]) for a in h]


def _report(text: str) -> ReloadReport:
    r = json.loads(text)
    return ReloadReport(r["generation"], r["added"], r["kept"], r["removed"], r["rescoped"])


def _body(request: Request) -> bytes:
    if isinstance(request, bytes):
        return request
    if isinstance(request, str):
        return request.encode()
    if isinstance(request, Mapping):
        try:
            return json.dumps(request).encode()
        except (TypeError, ValueError) as e:
            raise TypeError(f"the request cannot be sent as JSON: {e}") from None
    raise TypeError(
        "request must be a dict (an OpenAI chat-completions request) or its JSON as str or bytes, "
        f"not {type(request).__name__}"
    )


def _seconds(value: Optional[Seconds], name: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or a datetime.timedelta, not {type(value).__name__}")
    return float(value)


def _opt_str(value: Optional[str], name: str) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


def _priority(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"priority must be an int, not {type(value).__name__}")
    return value


Options = Tuple[Optional[str], Optional[str], Optional[str], int, Optional[float], Optional[str]]


def _options(
    tenant: Optional[str],
    route: Optional[str],
    upstream: Optional[str],
    priority: int,
    deadline: Optional[Seconds],
    cache: Optional[str],
) -> Options:
    """A call's options as the native layer takes them, checked."""
    return (
        _opt_str(tenant, "tenant"),
        _opt_str(route, "route"),
        _opt_str(upstream, "upstream"),
        _priority(priority),
        _seconds(deadline, "deadline"),
        _opt_str(cache, "cache"),
    )


# ------------------------------------------------------------------------------------------
# The asyncio bridge: one completer per event loop (see the native module's bridge).


class _Bridge:
    """Answers of one event loop's calls: the native completer queues them and writes a byte
    to a pipe whose read end the loop watches; ``_wake`` resolves their futures."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.completer = _native.Completer(w)  # owns w from here on
        self.read_fd = r
        self.pending: Dict[int, "asyncio.Future[Any]"] = {}
        loop.add_reader(r, self._wake)
        weakref.finalize(loop, _close_fd, r)

    def _wake(self) -> None:
        try:
            os.read(self.read_fd, 4096)
        except BlockingIOError:
            pass
        pending = self.pending
        for call_id, ok, value in self.completer.take():
            fut = pending.pop(call_id, None)
            if fut is None or fut.done():
                continue  # cancelled meanwhile: what it got (a stream, a permit) is dropped
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(from_info(value))


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


_bridges: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Bridge]" = weakref.WeakKeyDictionary()
_ids = itertools.count(1)


def _bridge(loop: asyncio.AbstractEventLoop) -> _Bridge:
    b = _bridges.get(loop)
    if b is None:
        b = _bridges[loop] = _Bridge(loop)
    return b


async def _native_call(start: Callable[..., None], *args: Any) -> Any:
    """Runs the native async method ``start(completer, id, *args)`` and waits for its answer;
    cancelling the awaiting task cancels the call (the native task is aborted)."""
    loop = asyncio.get_running_loop()
    b = _bridge(loop)
    call_id = next(_ids)
    fut = loop.create_future()
    b.pending[call_id] = fut
    try:
        start(b.completer, call_id, *args)
    except NativeError as e:
        del b.pending[call_id]
        raise from_native(e) from None
    except BaseException:
        del b.pending[call_id]
        raise
    try:
        return await fut
    except asyncio.CancelledError:
        b.completer.cancel(call_id)
        b.pending.pop(call_id, None)
        raise


# ------------------------------------------------------------------------------------------
# Answers


class ChatResponse:
    """The answer of :meth:`Tollgate.send`: status and body, usage and what was charged."""

    __slots__ = ("status", "raw", "_meta_text", "_meta", "_json")

    def __init__(self, status: int, raw: bytes, meta: str) -> None:
        self.status: int = status
        """HTTP status (2xx)."""
        self.raw: bytes = raw
        """The JSON body as received."""
        self._meta_text = meta
        self._meta: Optional[Dict[str, Any]] = None
        self._json: Any = None

    def _m(self) -> Dict[str, Any]:
        if self._meta is None:
            self._meta = json.loads(self._meta_text)
        return self._meta

    @property
    def body(self) -> Any:
        """The JSON body, parsed."""
        if self._json is None:
            self._json = json.loads(self.raw)
        return self._json

    def json(self) -> Any:
        """The JSON body, parsed (as ``body``)."""
        return self.body

    @property
    def text(self) -> str:
        """The body as text."""
        return self.raw.decode("utf-8", "replace")

    @property
    def content(self) -> Optional[str]:
        """The first choice's message content."""
        try:
            c = self.body["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return c if isinstance(c, str) else None

    @property
    def headers(self) -> Dict[str, str]:
        """Response headers (several values of one name joined with ``, ``)."""
        h: Dict[str, str] = self._m()["headers"]
        return h

    @property
    def usage(self) -> Optional[Usage]:
        """Usage the upstream reported."""
        return _usage(self._m().get("usage"))

    @property
    def settlement(self) -> Optional[Settlement]:
        """What the call was charged (None for cache hits and shared answers)."""
        return _settlement(self._m().get("settlement"))

    @property
    def target(self) -> Optional[Target]:
        """Where the answering attempt went, when routed."""
        return _target(self._m().get("target"))

    @property
    def attempts(self) -> int:
        """Attempts made (0 for cache hits and shared answers)."""
        n: int = self._m()["attempts"]
        return n

    @property
    def history(self) -> List[AttemptRecord]:
        """Earlier attempts that failed, oldest first."""
        return _history(self._m()["history"])

    @property
    def source(self) -> str:
        """``upstream``, ``cache``, ``shared`` or ``stale``."""
        s: str = self._m()["source"]
        return s

    @property
    def queued(self) -> float:
        """Seconds spent waiting for budget room."""
        q: float = self._m()["queued"]
        return q

    def __repr__(self) -> str:
        return f"<ChatResponse status={self.status} bytes={len(self.raw)}>"


class _StreamBase:
    """What the sync and the asyncio stream share: the head, the buffer, the end."""

    def __init__(self, native: Any, raw: bool) -> None:
        self._native = native
        self._raw = raw
        head = json.loads(native.head)
        self.status: int = head["status"]
        """HTTP status of the answering response."""
        self.headers: Dict[str, str] = head["headers"]
        """Its headers (empty for cached answers)."""
        self.source: str = head["source"]
        """``upstream``, ``cache``, ``shared`` or ``stale``."""
        self.attempts: int = head["attempts"]
        """Attempts made so far (all of them once the stream ended)."""
        self.history: List[AttemptRecord] = _history(head["history"])
        """Failed attempts before the answering one."""
        self.target: Optional[Target] = _target(head["target"])
        """Where the answering attempt went, when routed."""
        self.queued: float = head["queued"]
        """Seconds spent waiting for budget room."""
        self.usage: Optional[Usage] = None
        """Set once the stream ended: the final usage chunk's, or the count of the text."""
        self.settlement: Optional[Settlement] = None
        """Set once the stream ended: what the call was charged."""
        self._buf: Deque[Any] = collections.deque()
        self._done = False

    def _take(self, batch: Tuple[List[str], Optional[str], Optional[bytes], bool, Optional[str]]) -> None:
        data, named, _encoded, done, end = batch
        names: Dict[int, Tuple[Optional[str], Optional[str]]] = {}
        if named is not None:
            for i, ev, eid in json.loads(named):
                names[i] = (ev, eid)
        for i, d in enumerate(data):
            if self._raw:
                ev, eid = names.get(i, (None, None))
                self._buf.append(StreamEvent(d, ev, eid))
            elif d != "[DONE]":
                self._buf.append(json.loads(d))
        if done:
            self._done = True
        if end is not None:
            e = json.loads(end)
            self.usage = _usage(e.get("usage"))
            self.settlement = _settlement(e.get("settlement"))
            self.target = _target(e.get("target"))
            self.attempts = e["attempts"]


class ChatStream(_StreamBase):
    """A streamed answer read with a ``for`` loop: the chunks (parsed JSON; with ``raw=True``
    the :class:`StreamEvent` themselves) as they arrive. ``usage`` and ``settlement`` are set
    once it ended. Breaking out early or :meth:`close` stops the call and frees its slot."""

    def __iter__(self) -> "ChatStream":
        return self

    def __next__(self) -> Any:
        while not self._buf:
            if self._done:
                raise StopIteration
            try:
                self._take(self._native.read(False))
            except NativeError as e:
                self._done = True
                raise from_native(e) from None
        return self._buf.popleft()

    def close(self) -> None:
        """Stops the stream: the connection is closed and the slot freed when this returns."""
        self._done = True
        self._buf.clear()
        self._native.close()

    def __enter__(self) -> "ChatStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self._native.close()


class AsyncChatStream(_StreamBase):
    """A streamed answer read with ``async for`` (see :class:`ChatStream`). Cancelling the
    reading task, breaking out, or :meth:`aclose` stops the call and frees its slot."""

    def __aiter__(self) -> "AsyncChatStream":
        return self

    async def __anext__(self) -> Any:
        while not self._buf:
            if self._done:
                raise StopAsyncIteration
            try:
                batch = await _native_call(self._native.read_async, False)
            except TollgateError:
                self._done = True
                raise
            except asyncio.CancelledError:
                self.close_now()
                raise
            self._take(batch)
        return self._buf.popleft()

    def close_now(self) -> None:
        """Stops the stream at once (see :meth:`aclose`)."""
        self._done = True
        self._buf.clear()
        self._native.close()

    async def aclose(self) -> None:
        """Stops the stream: the connection is closed and the slot freed when this returns."""
        self.close_now()

    async def __aenter__(self) -> "AsyncChatStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close_now()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self._native.close()


# ------------------------------------------------------------------------------------------
# The decide API


class Attempt:
    """The state a retry carries (from a ``retry`` verdict); pass it to ``admit``."""

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        self._native = native

    @property
    def number(self) -> int:
        """The number of the attempt this state is for (2 for the first retry)."""
        n: int = self._native.number
        return n


class Permit:
    """Capacity held by an admitted call. Settle it with :meth:`Tollgate.settle`; :meth:`release`
    (or garbage collection) gives it back as if the call was not sent."""

    __slots__ = ("_native", "__weakref__")

    def __init__(self, native: Any) -> None:
        self._native = native

    def release(self) -> bool:
        """Gives the capacity back unsettled; False when already settled or released."""
        r: bool = self._native.release()
        return r

    @property
    def settled(self) -> bool:
        """True once settled or released."""
        s: bool = self._native.settled
        return s

    def info(self) -> Optional[Dict[str, Any]]:
        """What the permit holds: ``budgets``, ``target``, ``attempt``, ``prompt_tokens``,
        ``completion_allowance``, ``reserved_tokens``, ``exact_prompt``, ``estimated_cost``
        (None once settled or released)."""
        text = self._native.info()
        if text is None:
            return None
        info: Dict[str, Any] = json.loads(text)
        info["target"] = _target(info.get("target"))
        return info


class Decision:
    """What ``admit`` decided: ``kind`` is ``go`` (``permit`` set), ``wait`` (ask again after
    ``after`` seconds; ``budget``, ``key``, ``limit`` say which limit) or ``deny`` (``error``)."""

    __slots__ = ("kind", "permit", "after", "budget", "key", "limit", "error")

    def __init__(self, out: Tuple[str, Any]) -> None:
        kind, value = out
        self.kind: Literal["go", "wait", "deny"] = kind  # type: ignore[assignment]
        self.permit: Optional[Permit] = None
        self.after: Optional[float] = None
        self.budget: Optional[str] = None
        self.key: Optional[str] = None
        self.limit: Optional[str] = None
        self.error: Optional[TollgateError] = None
        if kind == "go":
            self.permit = Permit(value)
        elif kind == "wait":
            self.after, self.budget, self.key, self.limit = value
        else:
            self.error = from_info(value)

    def __repr__(self) -> str:
        return f"<Decision {self.kind}>"


class Verdict:
    """What ``settle`` decided: ``kind`` is ``done``, ``retry`` (after ``after`` seconds, to
    ``target``; pass ``attempt`` to the next ``admit``) or ``give_up`` (``error``, a
    :class:`GaveUpError`). ``settlement`` is what this attempt was charged."""

    __slots__ = ("kind", "settlement", "after", "target", "attempt", "error")

    def __init__(self, text: str, attempt: Any) -> None:
        v = json.loads(text)
        self.kind: Literal["done", "retry", "give_up"] = v["kind"]
        s = _settlement(v["settlement"])
        assert s is not None
        self.settlement: Settlement = s
        self.after: Optional[float] = v.get("after")
        self.target: Optional[Target] = _target(v.get("target"))
        self.attempt: Optional[Attempt] = None if attempt is None else Attempt(attempt)
        self.error: Optional[TollgateError] = None if v.get("error") is None else from_info(json.dumps(v["error"]))

    def __repr__(self) -> str:
        return f"<Verdict {self.kind}>"


# ------------------------------------------------------------------------------------------
# The engine


class PolicyWatcher:
    """A running watch of a policy file; :meth:`close` (or leaving the ``with`` block) stops it."""

    def __init__(self, native: Any) -> None:
        self._native = native

    def close(self) -> None:
        """Stops watching."""
        self._native.close()

    def __enter__(self) -> "PolicyWatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Tollgate:
    """The policy engine: budgets, token accounting, cache, retries, and the calls themselves.

    ``Tollgate(policy_text)`` reads a policy (TOML or JSON); :meth:`from_file` reads a file.
    A refused policy raises :class:`PolicyError` listing every problem. Use it as a context
    manager, or call :meth:`close` when done.
    """

    def __init__(self, policy: str) -> None:
        if not isinstance(policy, str):
            raise TypeError(f"policy must be the policy's text (str), not {type(policy).__name__}")
        self._engine: Any = self._make(policy, False)
        self._watchers: "weakref.WeakSet[PolicyWatcher]" = weakref.WeakSet()

    @staticmethod
    def _make(policy: str, is_path: bool) -> Any:
        try:
            return _native.Engine(policy, is_path)
        except NativeError as e:
            raise from_native(e) from None

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"]) -> "Tollgate":
        """An engine from the policy file at ``path`` (``.toml`` or ``.json``)."""
        tg = cls.__new__(cls)
        tg._engine = cls._make(os.fspath(path), True)
        tg._watchers = weakref.WeakSet()
        return tg

    @property
    def _e(self) -> Any:
        e = self._engine
        if e is None:
            raise ClosedError("this Tollgate is closed", code="closed")
        return e

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stops its watchers; later calls raise :class:`ClosedError`. Calls in flight finish."""
        for w in list(self._watchers):
            w.close()
        self._engine = None

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._engine is None

    def __enter__(self) -> "Tollgate":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "Tollgate":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- policy -----------------------------------------------------------------------------

    def reload(self, policy: Optional[str] = None, *, path: Union[str, "os.PathLike[str]", None] = None) -> ReloadReport:
        """Replaces the policy with ``policy`` (text) or the file at ``path``. A refused policy
        raises :class:`PolicyError` with every problem and the running one stays."""
        if (policy is None) == (path is None):
            raise TypeError("reload takes the policy text or path=..., one of them")
        try:
            if path is not None:
                return _report(self._e.reload(os.fspath(path), True))
            if not isinstance(policy, str):
                raise TypeError(f"policy must be the policy's text (str), not {type(policy).__name__}")
            return _report(self._e.reload(policy, False))
        except NativeError as e:
            raise from_native(e) from None

    @property
    def generation(self) -> int:
        """Number of accepted policies so far (1 for the first)."""
        g: int = self._e.generation
        return g

    def watch(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        interval: Seconds = 0.5,
        on_reload: Optional[Callable[[ReloadReport], None]] = None,
        on_error: Optional[Callable[[PolicyError], None]] = None,
    ) -> PolicyWatcher:
        """Watches the policy file at ``path`` and reloads it when its content changes.
        ``on_reload`` gets the report, ``on_error`` the :class:`PolicyError` of a refused or
        unreadable file (the running policy stays); both are called on the watcher's thread."""
        seconds = _seconds(interval, "interval")
        assert seconds is not None

        def callback(kind: str, text: str) -> None:
            if kind == "reloaded":
                if on_reload is not None:
                    on_reload(_report(text))
            elif on_error is not None:
                err = from_info(text)
                assert isinstance(err, PolicyError)
                on_error(err)

        try:
            w = PolicyWatcher(self._e.watch(os.fspath(path), seconds, callback))
        except NativeError as e:
            raise from_native(e) from None
        self._watchers.add(w)
        return w

    def metrics(self) -> str:
        """The metrics in the Prometheus text exposition format."""
        m: str = self._e.metrics()
        return m

    def stats(self) -> Stats:
        """Budget and cache counters."""
        s: Stats = json.loads(self._e.stats())
        return s

    # -- tokens, long texts, conversations ----------------------------------------------------

    def context_window(self, model: str) -> Optional[int]:
        """The context window of ``model`` in the running policy's model table (the bundled
        table with the policy's ``[models]``), None when unknown."""
        if not isinstance(model, str):
            raise TypeError(f"model must be a str, not {type(model).__name__}")
        w: Optional[int] = self._e.context_window(model)
        return w

    def count_tokens(self, model: str, text: str) -> "TokenCount":
        """The tokens of ``text`` for ``model`` with the running policy's model table: exact for
        models with a vocabulary, else an estimate; an unknown model raises
        :class:`InvalidRequestError` (``unknown_model``)."""
        from ._conversation import TokenCount

        if not isinstance(model, str) or not isinstance(text, str):
            raise TypeError("model and text must be str")
        try:
            return TokenCount(*self._e.count_tokens(model, text))
        except NativeError as e:
            raise from_native(e) from None

    def count_request(self, request: Request) -> "TokenCount":
        """The prompt tokens of a chat request as admission counts them (per-message overhead
        and reply priming included): what the upstream bills as ``prompt_tokens``."""
        from ._conversation import TokenCount

        try:
            return TokenCount(*self._e.count_request(_body(request)))
        except NativeError as e:
            raise from_native(e) from None

    def split_text(self, model: str, text: str, max_tokens: int, *, overlap: int = 0) -> List["Chunk"]:
        """:func:`tollgate.split_text` with the running policy's model table (its ``[models]``
        encodings and context windows)."""
        from ._conversation import _check_split, _chunks

        if not isinstance(model, str):
            raise TypeError(f"model must be a str, not {type(model).__name__}")
        _check_split(text, max_tokens, overlap)
        try:
            return _chunks(self._e.split_text(model, text, max_tokens, overlap))
        except NativeError as e:
            raise from_native(e) from None

    def conversation(self, model: str, **options: Any) -> "Conversation":
        """A :class:`Conversation` with ``model`` through this engine. Options:
        ``system_message``, ``completion_params``, ``max_model_tokens``, ``max_response_tokens``,
        ``tenant``, ``priority``, ``max_history``, ``store`` (default a
        :class:`MemoryMessageStore`; :meth:`redis_message_store` shares it across processes)."""
        from ._conversation import Conversation

        return Conversation(self, model, **options)

    def redis_message_store(self, ttl: Seconds = datetime.timedelta(days=30)) -> "RedisMessageStore":
        """A message store in the policy's ``[redis]``, each message kept ``ttl`` (default 30
        days). Raises :class:`InvalidRequestError` when the policy has no ``[redis]``."""
        from ._conversation import RedisMessageStore, _invalid

        seconds = _seconds(ttl, "ttl")
        assert seconds is not None
        try:
            native = self._e.redis_message_store(seconds)
        except NativeError as e:
            raise from_native(e) from None
        if native is None:
            raise _invalid("no_redis", "the policy has no [redis] section: a Redis message store needs one")
        return RedisMessageStore(native)

    # -- batch runs ---------------------------------------------------------------------------

    def _batch(
        self,
        journal: Union[str, "os.PathLike[str]", None],
        concurrency: int,
        tenant: Optional[str],
        priority: int,
        grace: Seconds,
    ) -> Any:
        for name, v in (("concurrency", concurrency), ("priority", priority)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
        if concurrency < 1:
            raise InvalidRequestError("concurrency must be at least 1", code="invalid_argument")
        grace_s = _seconds(grace, "grace")
        if grace_s is None:
            raise TypeError("grace must be a number of seconds or a datetime.timedelta, not None")
        try:
            return self._e.batch(
                None if journal is None else os.fspath(journal),
                concurrency,
                _opt_str(tenant, "tenant"),
                priority,
                grace_s,
            )
        except NativeError as e:
            raise from_native(e) from None

    def batch(
        self,
        requests: Iterable["BatchItem"],
        *,
        journal: Union[str, "os.PathLike[str]", None] = None,
        concurrency: int = 16,
        tenant: Optional[str] = None,
        priority: int = -100,
        grace: Seconds = 30,
    ) -> "BatchRun":
        """Runs OpenAI Batch API requests (dicts or JSON lines: ``custom_id``, ``body``, optional
        ``tenant``, ``priority``) through the engine, at most ``concurrency`` at once, at a low
        queue priority, waiting for budget room rather than failing; iterate the
        :class:`BatchRun` for the results. With ``journal`` (a directory), a rerun with the same
        requests in the same order sends nothing whose answer was recorded and hands the
        recorded results out first. Bad requests come out as ``invalid_line`` results; the run
        goes on. Raises :class:`JournalError` when the journal is damaged, in use, or another
        input's."""
        from ._batch import BatchRun

        return BatchRun(self._batch(journal, concurrency, tenant, priority, grace), requests)

    def abatch(
        self,
        requests: Union[Iterable["BatchItem"], AsyncIterable["BatchItem"]],
        *,
        journal: Union[str, "os.PathLike[str]", None] = None,
        concurrency: int = 16,
        tenant: Optional[str] = None,
        priority: int = -100,
        grace: Seconds = 30,
    ) -> "AsyncBatchRun":
        """As :meth:`batch`, for asyncio: ``async for r in tg.abatch(requests, ...)``; the
        requests may be an async iterable."""
        from ._batch import AsyncBatchRun

        return AsyncBatchRun(self._batch(journal, concurrency, tenant, priority, grace), requests)

    # -- the call API -------------------------------------------------------------------------

    def send(
        self,
        request: Request,
        *,
        tenant: Optional[str] = None,
        deadline: Optional[Seconds] = None,
        route: Optional[str] = None,
        upstream: Optional[str] = None,
        priority: int = 0,
        cache: Optional[CacheMode] = None,
    ) -> ChatResponse:
        """Sends a chat request through the whole pipeline (cache, admission, credentials,
        transport, retries, accounting) and waits for the answer, with the GIL released.
        Raises :class:`DeniedError`, :class:`GaveUpError`, :class:`DeadlineError`, ..."""
        body = _body(request)
        try:
            status, raw, meta = self._e.send(body, _options(tenant, route, upstream, priority, deadline, cache))
        except NativeError as e:
            raise from_native(e) from None
        return ChatResponse(status, raw, meta)

    async def asend(
        self,
        request: Request,
        *,
        tenant: Optional[str] = None,
        deadline: Optional[Seconds] = None,
        route: Optional[str] = None,
        upstream: Optional[str] = None,
        priority: int = 0,
        cache: Optional[CacheMode] = None,
    ) -> ChatResponse:
        """As :meth:`send`, for asyncio: the event loop never blocks (budgets kept in Redis
        included). Cancelling the task cancels the call and frees its slot."""
        status, raw, meta = await _native_call(
            self._e.send_async, _body(request), _options(tenant, route, upstream, priority, deadline, cache)
        )
        return ChatResponse(status, raw, meta)

    def stream(
        self,
        request: Request,
        *,
        tenant: Optional[str] = None,
        deadline: Optional[Seconds] = None,
        route: Optional[str] = None,
        upstream: Optional[str] = None,
        priority: int = 0,
        cache: Optional[CacheMode] = None,
        raw: bool = False,
    ) -> ChatStream:
        """Starts a streamed chat request (``"stream": true`` is set for you by the engine) and
        returns once an upstream accepted it: iterate the :class:`ChatStream` for its chunks. A
        stream cut after content arrived raises :class:`StreamCutError` from the loop."""
        body = _body(request)
        try:
            native = self._e.stream(body, _options(tenant, route, upstream, priority, deadline, cache))
        except NativeError as e:
            raise from_native(e) from None
        return ChatStream(native, raw)

    async def astream(
        self,
        request: Request,
        *,
        tenant: Optional[str] = None,
        deadline: Optional[Seconds] = None,
        route: Optional[str] = None,
        upstream: Optional[str] = None,
        priority: int = 0,
        cache: Optional[CacheMode] = None,
        raw: bool = False,
    ) -> AsyncChatStream:
        """As :meth:`stream`, for asyncio: ``async for chunk in await tg.astream(...)``."""
        native = await _native_call(
            self._e.stream_async, _body(request), _options(tenant, route, upstream, priority, deadline, cache)
        )
        return AsyncChatStream(native, raw)

    # -- the decide API -----------------------------------------------------------------------

    def _call_args(
        self,
        model: str,
        tenant: Optional[str],
        upstream: Optional[str],
        key: Optional[str],
        route: Optional[str],
        priority: int,
        prompt_tokens: Optional[int],
        prompt: Optional[str],
        request: Optional[Request],
        max_tokens: Optional[int],
        deadline: Optional[Seconds],
        attempt: Optional[Attempt],
    ) -> Tuple[Any, ...]:
        if not isinstance(model, str):
            raise TypeError(f"model must be a str, not {type(model).__name__}")
        if attempt is not None and not isinstance(attempt, Attempt):
            raise TypeError(f"attempt must be the Attempt of a retry verdict, not {type(attempt).__name__}")
        return (
            model,
            _opt_str(tenant, "tenant"),
            _opt_str(upstream, "upstream"),
            _opt_str(key, "key"),
            _opt_str(route, "route"),
            _priority(priority),
            prompt_tokens,
            _opt_str(prompt, "prompt"),
            None if request is None else _body(request),
            max_tokens,
            _seconds(deadline, "deadline"),
            None if attempt is None else attempt._native,
        )

    def admit(
        self,
        model: str,
        *,
        tenant: Optional[str] = None,
        upstream: Optional[str] = None,
        key: Optional[str] = None,
        route: Optional[str] = None,
        priority: int = 0,
        prompt_tokens: Optional[int] = None,
        prompt: Optional[str] = None,
        request: Optional[Request] = None,
        max_tokens: Optional[int] = None,
        deadline: Optional[Seconds] = None,
        attempt: Optional[Attempt] = None,
    ) -> Decision:
        """Admits or denies a call at once (go / wait / deny). The prompt is ``prompt_tokens``
        counted by you, else the ``prompt`` text or the ``request`` body counted by tollgate."""
        args = self._call_args(
            model, tenant, upstream, key, route, priority, prompt_tokens, prompt, request, max_tokens, deadline, attempt
        )
        try:
            return Decision(self._e.admit(args))
        except NativeError as e:
            raise from_native(e) from None

    async def aadmit(
        self,
        model: str,
        *,
        tenant: Optional[str] = None,
        upstream: Optional[str] = None,
        key: Optional[str] = None,
        route: Optional[str] = None,
        priority: int = 0,
        prompt_tokens: Optional[int] = None,
        prompt: Optional[str] = None,
        request: Optional[Request] = None,
        max_tokens: Optional[int] = None,
        deadline: Optional[Seconds] = None,
        attempt: Optional[Attempt] = None,
    ) -> Decision:
        """As :meth:`admit`, without blocking the event loop while budgets kept in Redis are asked."""
        args = self._call_args(
            model, tenant, upstream, key, route, priority, prompt_tokens, prompt, request, max_tokens, deadline, attempt
        )
        return Decision(await _native_call(self._e.admit_async, args))

    def acquire(
        self,
        model: str,
        *,
        tenant: Optional[str] = None,
        upstream: Optional[str] = None,
        key: Optional[str] = None,
        route: Optional[str] = None,
        priority: int = 0,
        prompt_tokens: Optional[int] = None,
        prompt: Optional[str] = None,
        request: Optional[Request] = None,
        max_tokens: Optional[int] = None,
        deadline: Optional[Seconds] = None,
        attempt: Optional[Attempt] = None,
    ) -> Permit:
        """Admits a call, waiting (GIL released) in the budgets' priority queues as long as the
        policy allows; raises :class:`DeniedError` otherwise."""
        args = self._call_args(
            model, tenant, upstream, key, route, priority, prompt_tokens, prompt, request, max_tokens, deadline, attempt
        )
        try:
            return Permit(self._e.acquire(args))
        except NativeError as e:
            raise from_native(e) from None

    async def aacquire(
        self,
        model: str,
        *,
        tenant: Optional[str] = None,
        upstream: Optional[str] = None,
        key: Optional[str] = None,
        route: Optional[str] = None,
        priority: int = 0,
        prompt_tokens: Optional[int] = None,
        prompt: Optional[str] = None,
        request: Optional[Request] = None,
        max_tokens: Optional[int] = None,
        deadline: Optional[Seconds] = None,
        attempt: Optional[Attempt] = None,
    ) -> Permit:
        """As :meth:`acquire`, for asyncio; cancelling the task leaves the queue."""
        args = self._call_args(
            model, tenant, upstream, key, route, priority, prompt_tokens, prompt, request, max_tokens, deadline, attempt
        )
        return Permit(await _native_call(self._e.acquire_async, args))

    def settle(
        self,
        permit: Permit,
        *,
        status: Optional[int] = None,
        usage: Optional[Mapping[str, Any]] = None,
        latency: Optional[Seconds] = None,
        failure: Optional[str] = None,
        headers: Union[Mapping[str, str], Sequence[Tuple[str, str]], None] = None,
        content_delivered: bool = False,
        sent: bool = True,
    ) -> Verdict:
        """Settles an admitted call: the reserved tokens and money are replaced by ``usage``
        (OpenAI's ``usage`` object, or the whole response body), its slots are released, and
        for a failed attempt (``status`` not 2xx, or ``failure``: ``status_503``,
        ``timeout_first_byte``, ``connect_refused``, ``reset``, ``timeout``, ...) the verdict
        says whether and when to retry. ``sent=False``: the request never left (all refunded)."""
        if not isinstance(permit, Permit):
            raise TypeError(f"permit must be a Permit from admit or acquire, not {type(permit).__name__}")
        if isinstance(headers, Mapping):
            hs = [(str(k), str(v)) for k, v in headers.items()]
        else:
            hs = [(str(k), str(v)) for k, v in (headers or [])]
        try:
            text, attempt = self._e.settle(
                permit._native,
                status,
                None if usage is None else json.dumps(usage),
                _seconds(latency, "latency"),
                _opt_str(failure, "failure"),
                hs,
                content_delivered,
                sent,
            )
        except NativeError as e:
            raise from_native(e) from None
        return Verdict(text, attempt)

    # -- the openai SDK -----------------------------------------------------------------------

    def transport(self, **options: Any) -> "TollgateTransport":
        """An ``httpx.BaseTransport`` that sends chat completions through this engine:
        ``openai.OpenAI(http_client=httpx.Client(transport=tg.transport(tenant="acme")))``.
        Options: ``tenant``, ``route``, ``upstream``, ``priority``, ``deadline``, ``cache``,
        ``fallback`` (a transport for every other request). See :class:`tollgate.httpx.TollgateTransport`."""
        from .httpx import TollgateTransport

        return TollgateTransport(self, **options)

    def async_transport(self, **options: Any) -> "AsyncTollgateTransport":
        """The asyncio form of :meth:`transport` (an ``httpx.AsyncBaseTransport``) for
        ``openai.AsyncOpenAI(http_client=httpx.AsyncClient(transport=tg.async_transport()))``."""
        from .httpx import AsyncTollgateTransport

        return AsyncTollgateTransport(self, **options)
