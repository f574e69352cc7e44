"""tollgate: a client-side policy engine for LLM API calls — exact budgets, token accounting,
cache with single-flight, and retries — in process, over tollgate's Rust engine.

Sync::

    with Tollgate.from_file("policy.toml") as tg:
        r = tg.send({"model": "gpt-4o", "messages": [...]}, tenant="acme")

asyncio: ``await tg.asend(...)``, ``async for chunk in await tg.astream(...)``. The openai SDK:
``openai.OpenAI(http_client=httpx.Client(transport=tg.transport(tenant="acme")))``.
"""

from ._core import (
    AsyncChatStream,
    Attempt,
    AttemptRecord,
    BudgetStats,
    CacheStats,
    ChatResponse,
    ChatStream,
    Cost,
    Decision,
    Permit,
    PolicyWatcher,
    ReloadReport,
    Settlement,
    Stats,
    StreamEvent,
    Target,
    Tollgate,
    Usage,
    Verdict,
)
from ._errors import (
    AuthError,
    ClosedError,
    DeadlineError,
    DeniedError,
    GaveUpError,
    InvalidRequestError,
    NoUpstreamError,
    PolicyError,
    StreamCutError,
    TollgateError,
    TransportError,
)
from ._native import __version__

__all__ = [
    "AsyncChatStream",
    "Attempt",
    "AttemptRecord",
    "AuthError",
    "BudgetStats",
    "CacheStats",
    "ChatResponse",
    "ChatStream",
    "ClosedError",
    "Cost",
    "DeadlineError",
    "Decision",
    "DeniedError",
    "GaveUpError",
    "InvalidRequestError",
    "NoUpstreamError",
    "Permit",
    "PolicyError",
    "PolicyWatcher",
    "ReloadReport",
    "Settlement",
    "Stats",
    "StreamCutError",
    "StreamEvent",
    "Target",
    "Tollgate",
    "TollgateError",
    "TransportError",
    "Usage",
    "Verdict",
    "__version__",
]
