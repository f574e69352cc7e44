"""Conversations over the call API (:class:`Conversation`), their message stores, and long
texts split by exact tokens (:func:`split_text`, :func:`count_tokens`).

A conversation keeps its messages in a store, rebuilds the history from parent links, and trims
it natively by the count the request's admission makes (the Rust core's ``trim``): the system
message and the new user message always stay, then the newest turns that fit in
``max_model_tokens - max_response_tokens``. Calls go through :meth:`Tollgate.send` /
:meth:`Tollgate.stream` (and their asyncio forms), so budgets, cache, retries, fallbacks,
deadlines and cancellation are the policy's. The same rules as the Rust ``Conversation`` and
Node's ``ChatGPTAPI``: an unknown parent is refused, not a silent new conversation; messages are
stored only once the call succeeded; a store that fails does not fail the call.
"""

from __future__ import annotations

import collections
import inspect
import json
import threading
import uuid
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Generator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    OrderedDict,
    Tuple,
    Union,
)

from . import _native
from ._errors import InvalidRequestError, MessageStoreError, TollgateError, UnknownParentError, from_native
from ._native import NativeError

if TYPE_CHECKING:
    from ._core import ChatStream, Seconds, Settlement, Tollgate, Usage

DEFAULT_MAX_RESPONSE_TOKENS = 1000
"""Tokens kept for the answer unless ``max_response_tokens`` says otherwise."""

DEFAULT_MAX_HISTORY = 1000
"""Most history messages read back through parent links (a guard against loops in a store)."""

DEFAULT_MAX_MESSAGES = 10_000
"""Messages a :class:`MemoryMessageStore` holds by default."""

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Bytes of text a :class:`MemoryMessageStore` holds by default."""

# Request fields a conversation sets itself: refused in completion_params, with the reason.
_OWN_FIELDS = {
    "model": "the conversation's model is its `model` argument",
    "messages": "the conversation builds the messages from its history",
    "max_tokens": "the answer's allowance is max_response_tokens (sent as max_tokens)",
    "max_completion_tokens": "the answer's allowance is max_response_tokens (sent as max_tokens)",
    "stream": "pass on_progress to stream",
}


def _invalid(code: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, code=code, info={"kind": "invalid_argument", "code": code, "message": message})


# ------------------------------------------------------------------------------------------
# Long texts


class Chunk(NamedTuple):
    """A piece of a long text. ``start``/``end`` index the text given (``text == s[start:end]``);
    the first ``overlap`` characters repeat the end of the previous chunk, so
    ``"".join(c.text[c.overlap:] for c in chunks)`` is the text."""

    text: str
    start: int
    end: int
    overlap: int
    tokens: int
    """Counted on the chunk's own text; at most the ``max_tokens`` asked for."""
    exact: bool
    """False when the model has no vocabulary and the count is an estimate (which errs high)."""


class TokenCount(NamedTuple):
    """A token count, and whether it is exact (the model's vocabulary) or an estimate."""

    tokens: int
    exact: bool


def _check_split(text: object, max_tokens: object, overlap: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    for name, v in (("max_tokens", max_tokens), ("overlap", overlap)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, not {type(v).__name__}")
        if v < 0:
            raise _invalid("invalid_argument", f"{name} must not be negative (got {v})")


def _chunks(raw: List[Tuple[str, int, int, int, int, bool]]) -> List[Chunk]:
    return [Chunk(*c) for c in raw]


def split_text(model: str, text: str, max_tokens: int, *, overlap: int = 0) -> List[Chunk]:
    """Cuts ``text`` into chunks of at most ``max_tokens`` tokens of ``model`` (the bundled
    model table; :meth:`Tollgate.split_text` uses a policy's): between paragraphs, else
    sentences and line breaks, else clauses, else words, inside a word only when it alone is
    too long. Greedy and linear in the text; ``overlap`` tokens of each chunk's end start the
    next. Bad input raises :class:`InvalidRequestError` with a stable ``code``: ``zero_max``,
    ``overlap_too_large``, ``exceeds_context_window``, ``unknown_model``, ``empty``,
    ``char_too_large``."""
    if not isinstance(model, str):
        raise TypeError(f"model must be a str, not {type(model).__name__}")
    _check_split(text, max_tokens, overlap)
    try:
        return _chunks(_native.split_text(model, text, max_tokens, overlap))
    except NativeError as e:
        raise from_native(e) from None


def count_tokens(model: str, text: str) -> TokenCount:
    """The tokens of ``text`` for ``model`` (the bundled model table): exact for models with a
    vocabulary, else an estimate; a model the table does not know raises
    :class:`InvalidRequestError` (``unknown_model``)."""
    if not isinstance(model, str) or not isinstance(text, str):
        raise TypeError("model and text must be str")
    try:
        return TokenCount(*_native.count_tokens(model, text))
    except NativeError as e:
        raise from_native(e) from None


# ------------------------------------------------------------------------------------------
# Messages and stores


@dataclass(frozen=True)
class Message:
    """A stored message of a conversation."""

    id: str
    role: str
    """``user`` or ``assistant``."""
    text: str
    conversation_id: str
    parent_message_id: Optional[str] = None
    """The message this one follows; None for the first of a conversation."""

    def to_json(self) -> str:
        """The message in the chatgpt shape the other bindings store (``parentMessageId``,
        ``conversationId``): a store in Redis is shared with Rust and Node processes."""
        d: Dict[str, Any] = {"id": self.id, "role": self.role, "text": self.text}
        if self.parent_message_id is not None:
            d["parentMessageId"] = self.parent_message_id
        d["conversationId"] = self.conversation_id
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "Message":
        """A message from :meth:`to_json`'s shape."""
        d = json.loads(text)
        return cls(d["id"], d["role"], d["text"], d["conversationId"], d.get("parentMessageId"))


class MemoryMessageStore:
    """Messages in this process's memory, the least recently used dropped first once
    ``max_messages`` or ``max_bytes`` (of text) is reached. Thread-safe; usable from asyncio."""

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        for name, v in (("max_messages", max_messages), ("max_bytes", max_bytes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int (got {v!r})")
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._bytes = 0
        self._map: OrderedDict[str, Message] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _size(m: Message) -> int:
        return len(m.id) + len(m.role) + len(m.text.encode()) + len(m.parent_message_id or "") + len(m.conversation_id) + 64

    def get(self, id: str) -> Optional[Message]:
        """The message with this id, None when there is none."""
        with self._lock:
            m = self._map.get(id)
            if m is not None:
                self._map.move_to_end(id)
            return m

    def put(self, message: Message) -> None:
        """Stores (or replaces) a message."""
        with self._lock:
            old = self._map.pop(message.id, None)
            if old is not None:
                self._bytes -= self._size(old)
            self._map[message.id] = message
            self._bytes += self._size(message)
            while len(self._map) > self._max_messages or (self._bytes > self._max_bytes and len(self._map) > 1):
                _, dropped = self._map.popitem(last=False)
                self._bytes -= self._size(dropped)

    async def aget(self, id: str) -> Optional[Message]:
        """As :meth:`get`."""
        return self.get(id)

    async def aput(self, message: Message) -> None:
        """As :meth:`put`."""
        self.put(message)

    def __len__(self) -> int:
        return len(self._map)

    @property
    def bytes(self) -> int:
        """Bytes the messages take (their text fields)."""
        return self._bytes


class RedisMessageStore:
    """Messages in the policy's ``[redis]`` (``<key_prefix>:msg:<id>``, each kept for the TTL
    given to :meth:`Tollgate.redis_message_store`), shared with every process — Rust, Node or
    Python — on the same server. ``get``/``put`` wait with the GIL released; ``aget``/``aput``
    never block the event loop. Failures raise :class:`MessageStoreError`."""

    def __init__(self, native: Any) -> None:
        self._native = native

    def get(self, id: str) -> Optional[Message]:
        """The message with this id, None when there is none (or it expired)."""
        try:
            text = self._native.get(id)
        except NativeError as e:
            raise from_native(e) from None
        return None if text is None else Message.from_json(text)

    def put(self, message: Message) -> None:
        """Stores (or replaces) a message."""
        try:
            self._native.put(message.to_json())
        except NativeError as e:
            raise from_native(e) from None

    async def aget(self, id: str) -> Optional[Message]:
        """As :meth:`get`, for asyncio."""
        from ._core import _native_call

        text = await _native_call(self._native.get_async, id)
        return None if text is None else Message.from_json(text)

    async def aput(self, message: Message) -> None:
        """As :meth:`put`, for asyncio."""
        from ._core import _native_call

        await _native_call(self._native.put_async, message.to_json())


# ------------------------------------------------------------------------------------------
# Conversations


class Progress(NamedTuple):
    """A streamed answer so far: the assistant message's id (the one the reply will carry),
    what the last event added, and the whole text so far."""

    id: str
    delta: str
    text: str


@dataclass(frozen=True)
class Reply:
    """The answer to :meth:`Conversation.send`."""

    message: Message
    """The assistant's message (stored, with the user's message as its parent)."""
    user_message: Message
    """The user's message as stored."""
    usage: Optional["Usage"]
    """Usage the upstream reported (or tollgate counted, for a stream without it)."""
    settlement: Optional["Settlement"]
    """What the call was charged."""
    prompt_tokens: int
    """The prompt's count, as admission counted it."""
    history_kept: int
    """History messages sent."""
    history_dropped: int
    """History messages left out to fit the window (the oldest)."""
    finish_reason: Optional[str]
    """The answer's finish reason, when it gave one."""
    detail: Dict[str, Any]
    """The upstream's whole answer (for a stream, assembled as a ``chat.completion``)."""
    store_error: Optional[MessageStoreError]
    """A store that failed reading the history (sent with what was read) or writing the
    messages (the answer is not kept); the call itself answered."""

    @property
    def text(self) -> str:
        """The answer's text."""
        return self.message.text

    @property
    def id(self) -> str:
        """The answer's message id: the ``parent_message_id`` of the next send."""
        return self.message.id

    @property
    def conversation_id(self) -> str:
        """The conversation's id."""
        return self.message.conversation_id


class _Prepared(NamedTuple):
    body: Dict[str, Any]
    user: Message
    assistant_id: str
    trimmed: Dict[str, Any]
    store_error: Optional[MessageStoreError]
    tenant: Optional[str]


class _Answer:
    """What the call answered: built from a whole response or from a stream's chunks."""

    def __init__(self, assistant_id: str, model: str) -> None:
        self.assistant_id = assistant_id
        self.model = model
        self.text = ""
        self.finish_reason: Optional[str] = None
        self.first_id: Optional[str] = None
        self.usage: Optional["Usage"] = None
        self.settlement: Optional["Settlement"] = None
        self.detail: Dict[str, Any] = {}

    def whole(self, body: Any, body_text: str, usage: Optional["Usage"], settlement: Optional["Settlement"]) -> None:
        choice = (body.get("choices") or [None])[0] if isinstance(body, dict) else None
        content = (choice.get("message") or {}).get("content") if isinstance(choice, dict) else None
        if not isinstance(content, str):
            raise TollgateError(f"the answer has no message text: {body_text[:500]}", code="no_text")
        self.text = content
        self.finish_reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        self.usage, self.settlement, self.detail = usage, settlement, body

    def chunk(self, chunk: Any) -> Optional[Progress]:
        """Takes one streamed chunk; the progress when it added text."""
        if not isinstance(chunk, dict):
            return None
        if self.first_id is None and isinstance(chunk.get("id"), str):
            self.first_id = chunk["id"]
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = (choice.get("delta") or {}).get("content")
        if not isinstance(delta, str) or not delta:
            return None
        self.text += delta
        return Progress(self.assistant_id, delta, self.text)

    def streamed(self, usage: Optional["Usage"], settlement: Optional["Settlement"]) -> None:
        self.usage, self.settlement = usage, settlement
        self.detail = {
            "id": self.first_id or self.assistant_id,
            "object": "chat.completion",
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": None
            if usage is None
            else {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        }


# A walk of the history: yields ids to read, receives the message, None, or the store's error.
_Walk = Generator[str, Union[Message, None, BaseException], Tuple[List[Message], Optional[MessageStoreError]]]


class Conversation:
    """Conversations with ``model`` through a :class:`Tollgate`, their messages in ``store``.

    ``send(text, parent_message_id=reply.id)`` continues a conversation: the history is read
    back through parent links and trimmed by the exact count admission makes to fit
    ``max_model_tokens`` (default: the model's window in the policy's model table) less
    ``max_response_tokens``. Use :meth:`send` / :meth:`asend`; pass ``on_progress`` to stream.
    """

    def __init__(
        self,
        tollgate: "Tollgate",
        model: str,
        *,
        system_message: Optional[str] = None,
        completion_params: Optional[Mapping[str, Any]] = None,
        max_model_tokens: Optional[int] = None,
        max_response_tokens: int = DEFAULT_MAX_RESPONSE_TOKENS,
        tenant: Optional[str] = None,
        priority: int = 0,
        max_history: int = DEFAULT_MAX_HISTORY,
        store: Optional[Any] = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise TypeError("model must be a non-empty str")
        if system_message is not None and not isinstance(system_message, str):
            raise TypeError(f"system_message must be a str, not {type(system_message).__name__}")
        params = dict(completion_params or {})
        for name, why in _OWN_FIELDS.items():
            if name in params:
                raise _invalid("invalid_argument", f"completion_params may not set {name}: {why}")
        if max_model_tokens is None:
            window = tollgate.context_window(model)
            if window is None:
                raise _invalid(
                    "unknown_window",
                    f"the context window of model '{model}' is not known (not in the policy's [models] "
                    "or the bundled table): set max_model_tokens",
                )
            max_model_tokens = window
        for name, v in (
            ("max_model_tokens", max_model_tokens),
            ("max_response_tokens", max_response_tokens),
            ("max_history", max_history),
        ):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
            if v < 1:
                raise _invalid("invalid_argument", f"{name} must be at least 1 (got {v})")
        if max_response_tokens >= max_model_tokens:
            raise _invalid(
                "no_room",
                f"max_response_tokens ({max_response_tokens}) leaves no room for a prompt in "
                f"max_model_tokens ({max_model_tokens})",
            )
        store = MemoryMessageStore() if store is None else store
        if not (callable(getattr(store, "get", None)) and callable(getattr(store, "put", None))) and not (
            callable(getattr(store, "aget", None)) and callable(getattr(store, "aput", None))
        ):
            raise TypeError("store needs get(id) and put(message), or aget(id) and aput(message) for asend")
        self._tg = tollgate
        self.model = model
        """The model asked for."""
        self.system_message = system_message or None
        """The system message, unless a send gives its own."""
        self.completion_params: Dict[str, Any] = params
        """Other request fields (``temperature``, ...), sent with every message."""
        self.max_model_tokens: int = max_model_tokens
        """The context window the history is trimmed to."""
        self.max_response_tokens = max_response_tokens
        """Tokens kept for the answer (sent as ``max_tokens``)."""
        self.tenant = tenant
        """The tenant the calls are made for."""
        self.priority = priority
        """The calls' queue priority."""
        self.max_history = max_history
        """Most history messages read back through parent links."""
        self.store = store
        """Where the messages are kept."""

    # -- the steps both forms share -------------------------------------------------------

    def _walk(self, parent: Optional[str]) -> _Walk:
        out: List[Message] = []
        nxt = parent
        while nxt is not None and len(out) < self.max_history:
            got = yield nxt
            if isinstance(got, BaseException):
                err = MessageStoreError(
                    f"the message store failed reading message {nxt}: {got}; sent without the history before it",
                    code="message_store",
                )
                err.__cause__ = got
                out.reverse()
                return out, err
            if got is None:
                if out:
                    break  # an older message expired: the history starts after it
                raise UnknownParentError(
                    f"parent message {nxt} is not in the message store (expired, evicted or never stored); "
                    "send without parent_message_id to start a new conversation",
                    code="unknown_parent",
                    info={"parent_message_id": nxt},
                )
            out.append(got)
            nxt = got.parent_message_id
        out.reverse()
        return out, None

    def _check(self, text: object, parent: object) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        if not text:
            raise _invalid("empty", "the message is empty")
        if parent is not None and not isinstance(parent, str):
            raise TypeError(f"parent_message_id must be a str, not {type(parent).__name__}")

    def _prepare(
        self,
        text: str,
        history: List[Message],
        read_error: Optional[MessageStoreError],
        parent: Optional[str],
        conversation_id: Optional[str],
        system_message: Optional[str],
        message_id: Optional[str],
        tenant: Optional[str],
    ) -> _Prepared:
        system = system_message or self.system_message
        try:
            raw = self._tg._e.trim_conversation(
                self.model,
                system,
                [(m.role, m.text) for m in history],
                text,
                self.max_model_tokens,
                self.max_response_tokens,
            )
        except NativeError as e:
            raise from_native(e) from None
        trimmed: Dict[str, Any] = json.loads(raw)
        conv = conversation_id or (history[-1].conversation_id if history else None) or str(uuid.uuid4())
        user = Message(message_id or str(uuid.uuid4()), "user", text, conv, parent)
        body = dict(self.completion_params)
        body.update(model=self.model, messages=trimmed["messages"], max_tokens=self.max_response_tokens)
        return _Prepared(body, user, str(uuid.uuid4()), trimmed, read_error, tenant if tenant is not None else self.tenant)

    @staticmethod
    def _put_failed(message: Message, e: BaseException) -> MessageStoreError:
        err = MessageStoreError(
            f"the message store failed storing message {message.id}: {e}; the answer is not kept",
            code="message_store",
        )
        err.__cause__ = e
        return err

    @staticmethod
    def _assistant(p: _Prepared, answer: _Answer) -> Message:
        return Message(p.assistant_id, "assistant", answer.text, p.user.conversation_id, p.user.id)

    def _reply(
        self, p: _Prepared, assistant: Message, answer: _Answer, store_error: Optional[MessageStoreError]
    ) -> Reply:
        return Reply(
            message=assistant,
            user_message=p.user,
            usage=answer.usage,
            settlement=answer.settlement,
            prompt_tokens=p.trimmed["prompt_tokens"],
            history_kept=p.trimmed["kept"],
            history_dropped=p.trimmed["dropped"],
            finish_reason=answer.finish_reason,
            detail=answer.detail,
            store_error=store_error,
        )

    # -- sync -------------------------------------------------------------------------------

    def send(
        self,
        text: str,
        *,
        parent_message_id: Optional[str] = None,
        conversation_id: Optional[str] = None,
        system_message: Optional[str] = None,
        message_id: Optional[str] = None,
        deadline: Optional["Seconds"] = None,
        tenant: Optional[str] = None,
        on_progress: Optional[Callable[[Progress], None]] = None,
    ) -> Reply:
        """Sends ``text`` after ``parent_message_id`` (None starts a conversation) and waits for
        the answer. With ``on_progress`` the answer is streamed and ``on_progress`` called with
        the text so far after every event that adds some. The user's message and the answer are
        stored once the call succeeded. Raises :class:`TooLongError` (nothing sent) when the
        system and user messages alone do not fit, :class:`UnknownParentError`, and the call's
        errors (:class:`DeniedError`, :class:`StreamCutError`, ...)."""
        self._check(text, parent_message_id)
        if not callable(getattr(self.store, "get", None)):
            raise TypeError("this store has only aget/aput: use asend, or give it get(id) and put(message)")
        walk = self._walk(parent_message_id)
        history, read_error = _drive(walk, self.store.get)
        p = self._prepare(
            text, history, read_error, parent_message_id, conversation_id, system_message, message_id, tenant
        )
        answer = _Answer(p.assistant_id, self.model)
        if on_progress is None:
            r = self._tg.send(p.body, tenant=p.tenant, deadline=deadline, priority=self.priority)
            answer.whole(r.body, r.text, r.usage, r.settlement)
        else:
            stream: "ChatStream"
            with self._tg.stream(p.body, tenant=p.tenant, deadline=deadline, priority=self.priority) as stream:
                for chunk in stream:
                    progress = answer.chunk(chunk)
                    if progress is not None:
                        on_progress(progress)
                answer.streamed(stream.usage, stream.settlement)
        store_error = p.store_error
        assistant = self._assistant(p, answer)
        for m in (p.user, assistant):
            try:
                self.store.put(m)
            except Exception as e:  # a store's own error, whatever its class
                store_error = store_error or self._put_failed(m, e)
        return self._reply(p, assistant, answer, store_error)

    # -- asyncio ----------------------------------------------------------------------------

    async def asend(
        self,
        text: str,
        *,
        parent_message_id: Optional[str] = None,
        conversation_id: Optional[str] = None,
        system_message: Optional[str] = None,
        message_id: Optional[str] = None,
        deadline: Optional["Seconds"] = None,
        tenant: Optional[str] = None,
        on_progress: Optional[Callable[[Progress], Any]] = None,
    ) -> Reply:
        """As :meth:`send`, for asyncio: the store's ``aget``/``aput`` are used when it has
        them, ``on_progress`` may be a coroutine function, and cancelling the task cancels the
        call (nothing is stored)."""
        self._check(text, parent_message_id)
        get: Callable[[str], Any] = getattr(self.store, "aget", None) or self.store.get
        put: Callable[[Message], Any] = getattr(self.store, "aput", None) or self.store.put
        walk = self._walk(parent_message_id)
        history, read_error = await _adrive(walk, get)
        p = self._prepare(
            text, history, read_error, parent_message_id, conversation_id, system_message, message_id, tenant
        )
        answer = _Answer(p.assistant_id, self.model)
        if on_progress is None:
            r = await self._tg.asend(p.body, tenant=p.tenant, deadline=deadline, priority=self.priority)
            answer.whole(r.body, r.text, r.usage, r.settlement)
        else:
            async with await self._tg.astream(
                p.body, tenant=p.tenant, deadline=deadline, priority=self.priority
            ) as stream:
                async for chunk in stream:
                    progress = answer.chunk(chunk)
                    if progress is not None:
                        await _maybe_await(on_progress(progress))
                answer.streamed(stream.usage, stream.settlement)
        store_error = p.store_error
        assistant = self._assistant(p, answer)
        for m in (p.user, assistant):
            try:
                await _maybe_await(put(m))
            except Exception as e:  # a store's own error, whatever its class
                store_error = store_error or self._put_failed(m, e)
        return self._reply(p, assistant, answer, store_error)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _drive(walk: _Walk, get: Callable[[str], Optional[Message]]) -> Tuple[List[Message], Optional[MessageStoreError]]:
    """Runs a history walk with a blocking store."""
    try:
        want = next(walk)
        while True:
            got: Union[Message, None, BaseException]
            try:
                got = get(want)
            except Exception as e:  # a store's own error, whatever its class
                got = e
            want = walk.send(got)
    except StopIteration as done:
        result: Tuple[List[Message], Optional[MessageStoreError]] = done.value
        return result


async def _adrive(walk: _Walk, get: Callable[[str], Any]) -> Tuple[List[Message], Optional[MessageStoreError]]:
    """Runs a history walk with a store that may answer with awaitables."""
    try:
        want = next(walk)
        while True:
            got: Union[Message, None, BaseException]
            try:
                got = await _maybe_await(get(want))
            except Exception as e:  # a store's own error, whatever its class
                got = e
            want = walk.send(got)
    except StopIteration as done:
        result: Tuple[List[Message], Optional[MessageStoreError]] = done.value
        return result
