"""Exception classes of tollgate, mirroring the other bindings (Node, Go, C++).

The native layer raises ``NativeError`` whose argument is the error's JSON; :func:`from_native`
turns it into the matching :class:`TollgateError` subclass.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from ._native import NativeError

__all__ = [
    "TollgateError",
    "DeniedError",
    "GaveUpError",
    "DeadlineError",
    "InvalidRequestError",
    "NoUpstreamError",
    "AuthError",
    "TransportError",
    "StreamCutError",
    "PolicyError",
    "ClosedError",
    "TooLongError",
    "UnknownParentError",
    "MessageStoreError",
    "JournalError",
]


class TollgateError(Exception):
    """Every error tollgate raises. ``code`` is the stable code of the Rust API."""

    kind: str = "tollgate"

    def __init__(self, message: str, *, code: Optional[str] = None, info: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code: str = code or self.kind
        self._info: Dict[str, Any] = info or {}

    @property
    def answer(self) -> Optional[Tuple[int, List[Tuple[str, str]], str]]:
        """The OpenAI-compatible HTTP answer for this error (status, headers, body), as
        ``tollgate serve`` would send it; None for errors that are not a call's."""
        a = self._info.get("answer")
        if a is None:
            return None
        return int(a[0]), [(str(n), str(v)) for n, v in a[1]], str(a[2])


class DeniedError(TollgateError):
    """A budget refused the call. ``code`` is the reason (``budget_exhausted``,
    ``concurrency``, ``wait_timeout``, ...)."""

    kind = "denied"

    @property
    def budget(self) -> Optional[str]:
        """The budget that decided."""
        return self._info.get("budget")

    @property
    def key(self) -> Optional[str]:
        """Its scope key (``tenant=acme``)."""
        return self._info.get("key")

    @property
    def limit(self) -> Optional[str]:
        """The exhausted limit (``requests_per_minute``, ...), when one is."""
        return self._info.get("limit")

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds until the same call could pass, when known."""
        return self._info.get("retry_after")


class GaveUpError(TollgateError):
    """The call failed and was not retried further; ``code`` says why
    (``attempts_exhausted``, ``not_retryable``, ...)."""

    kind = "gave_up"

    @property
    def http_status(self) -> Optional[int]:
        """The last answer's status, if one came."""
        return self._info.get("http_status")

    @property
    def body(self) -> Optional[str]:
        """The last answer's body (the upstream's error JSON), if one came."""
        return self._info.get("body")

    @property
    def history(self) -> List[Dict[str, Any]]:
        """Every attempt, oldest first: ``number``, ``target``, ``outcome``, ``decision``."""
        return list(self._info.get("history") or [])


class DeadlineError(TollgateError):
    """The call's deadline passed."""

    kind = "deadline"


class InvalidRequestError(TollgateError, ValueError):
    """The request is not a chat request tollgate can send, or an argument is wrong."""

    kind = "invalid_request"


class NoUpstreamError(TollgateError):
    """Nothing in the policy says where the call goes."""

    kind = "no_upstream"


class AuthError(TollgateError):
    """The credentials could not be read or obtained."""

    kind = "auth"


class TransportError(TollgateError):
    """The transport could not be set up, or the identical call this one waited for failed."""

    kind = "transport"


class StreamCutError(TollgateError):
    """A stream broke off after content reached the caller; it is not retried."""

    kind = "stream_cut"

    @property
    def settlement(self) -> Optional[Dict[str, Any]]:
        """What the call was charged."""
        return self._info.get("settlement")


class PolicyError(TollgateError, ValueError):
    """A refused policy; ``problems`` lists every problem, one line each."""

    kind = "policy"

    @property
    def problems(self) -> List[str]:
        """Every problem of the policy."""
        return list(self._info.get("problems") or [])


class TooLongError(InvalidRequestError):
    """A conversation's system and new user message alone need more prompt tokens than the
    window leaves (``window - reserved``); nothing was sent."""

    kind = "too_long"

    @property
    def needed(self) -> int:
        """Prompt tokens the system and user messages need."""
        return int(self._info.get("needed") or 0)

    @property
    def budget(self) -> int:
        """The prompt budget: ``window - reserved``."""
        return int(self._info.get("prompt_budget") or 0)

    @property
    def window(self) -> int:
        """The context window."""
        return int(self._info.get("window") or 0)

    @property
    def reserved(self) -> int:
        """Tokens reserved for the answer."""
        return int(self._info.get("reserved") or 0)


class UnknownParentError(TollgateError, LookupError):
    """A conversation's parent message is not in the message store (expired, evicted or never
    stored); send without ``parent_message_id`` to start a new conversation."""

    kind = "unknown_parent"

    @property
    def parent_message_id(self) -> Optional[str]:
        """The id that was not found."""
        return self._info.get("parent_message_id")


class MessageStoreError(TollgateError):
    """A message store failed. Raised by the stores; a conversation's send that met it still
    answers and carries it in ``Reply.store_error``."""

    kind = "message_store"


class JournalError(TollgateError):
    """A batch's journal cannot be used: damaged (move it aside to start afresh, which pays for
    every request again), in use by another batch, or recording another input."""

    kind = "journal"


class ClosedError(TollgateError):
    """The Tollgate was closed."""

    kind = "closed"


_CLASSES: Dict[str, type] = {
    "denied": DeniedError,
    "gave_up": GaveUpError,
    "deadline": DeadlineError,
    "invalid_request": InvalidRequestError,
    "invalid_argument": InvalidRequestError,
    "no_upstream": NoUpstreamError,
    "auth": AuthError,
    "transport": TransportError,
    "shared": TransportError,
    "stream_cut": StreamCutError,
    "policy": PolicyError,
    "closed": ClosedError,
    "too_long": TooLongError,
    "unknown_parent": UnknownParentError,
    "message_store": MessageStoreError,
    "journal": JournalError,
}


def from_info(text: str) -> TollgateError:
    """The exception for an error's JSON."""
    info: Dict[str, Any] = json.loads(text)
    cls = _CLASSES.get(info.get("kind", ""), TollgateError)
    err: TollgateError = cls(info.get("message", ""), code=info.get("code"), info=info)
    return err


def from_native(e: NativeError) -> TollgateError:
    """The exception for a ``NativeError``."""
    return from_info(str(e.args[0]))
