"""Shared fixtures: a test upstream started in-process on loopback (tollgate_testkit), a
policy over it, a small chat request, and a throwaway redis-server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Any, Callable, Dict, Iterator

import pytest
import tollgate_testkit

import tollgate


def policy(up: tollgate_testkit.TestUpstream, rest: str = "") -> str:
    """A policy with one upstream at ``up`` and ``rest`` appended."""
    return f'version = 1\n[[upstream]]\nname = "test"\nbase_url = "{up.base_url}"\n{rest}'


def chat(content: str = "hello there", **extra: Any) -> Dict[str, Any]:
    """A small chat request."""
    body: Dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    body.update(extra)
    return body


@pytest.fixture
def up() -> Iterator[tollgate_testkit.TestUpstream]:
    """An upstream for one test."""
    u = tollgate_testkit.TestUpstream()
    yield u
    u.close()


@pytest.fixture
def make_up() -> Iterator[Callable[..., tollgate_testkit.TestUpstream]]:
    """Starts upstreams with options; closes them after the test."""
    started = []

    def make(**options: Any) -> tollgate_testkit.TestUpstream:
        u = tollgate_testkit.TestUpstream(**options)
        started.append(u)
        return u

    yield make
    for u in started:
        u.close()


@pytest.fixture
def engine(up: tollgate_testkit.TestUpstream) -> Callable[[str], tollgate.Tollgate]:
    """Engines over ``up`` with a policy suffix; closed after the test."""
    made = []

    def make(rest: str = "") -> tollgate.Tollgate:
        tg = tollgate.Tollgate(policy(up, rest))
        made.append(tg)
        return tg

    yield make  # type: ignore[misc]
    for tg in made:
        tg.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def redis() -> Iterator[tuple]:
    """A throwaway redis-server: (url, process)."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is missing: install it (apt-get install redis-server)"
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        else:
            raise AssertionError("redis-server did not accept connections")
        yield f"redis://127.0.0.1:{port}", proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)
