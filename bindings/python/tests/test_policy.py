"""Policies (text, file, reload, watch), bad input, metrics, stats, and closing."""

from __future__ import annotations

import threading

import pytest
from conftest import chat, policy

import tollgate
from tollgate import ClosedError, InvalidRequestError, PolicyError

BAD = """version = 1
[[budget]]
name = "a"
requests_per_minute = -1
[[budget]]
name = "b"
tokens_per_minute = "lots"
"""


def test_an_invalid_policy_lists_every_problem():
    with pytest.raises(PolicyError) as info:
        tollgate.Tollgate(BAD)
    problems = info.value.problems
    assert len(problems) == 2
    assert "requests_per_minute" in problems[0]
    assert "tokens_per_minute" in problems[1]
    assert info.value.code == "policy"


def test_a_refused_reload_keeps_the_running_policy(up, engine):
    tg = engine('[[budget]]\nname = "rpm"\nrequests_per_minute = 1\n')
    with pytest.raises(PolicyError) as info:
        tg.reload(BAD)
    assert len(info.value.problems) == 2
    assert tg.generation == 1
    tg.send(chat())
    with pytest.raises(tollgate.DeniedError):
        tg.send(chat())


def test_from_file_and_reload_from_a_path(up, tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(policy(up))
    with tollgate.Tollgate.from_file(path) as tg:
        assert tg.send(chat()).status == 200
        path.write_text(policy(up, '[[budget]]\nname = "rpm"\nrequests_per_minute = 5\n'))
        report = tg.reload(path=path)
        assert report.added == ["rpm"]
        assert tg.generation == 2
    with pytest.raises(PolicyError):
        tollgate.Tollgate.from_file(tmp_path / "missing.toml")


def test_watch_reloads_a_changed_file_and_reports_a_refused_one(up, tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(policy(up))
    reloaded = threading.Event()
    refused = threading.Event()
    reports = []
    errors = []

    def on_reload(r: tollgate.ReloadReport) -> None:
        reports.append(r)
        reloaded.set()

    def on_error(e: PolicyError) -> None:
        errors.append(e)
        refused.set()

    with tollgate.Tollgate.from_file(path) as tg:
        with tg.watch(path, interval=0.02, on_reload=on_reload, on_error=on_error):
            path.write_text(policy(up, '[[budget]]\nname = "rpm"\nrequests_per_minute = 5\n'))
            assert reloaded.wait(10), "the watcher reloaded the changed file"
            assert reports[0].added == ["rpm"]
            assert tg.generation == 2
            path.write_text(BAD)
            assert refused.wait(10), "the watcher reported the refused file"
            assert len(errors[0].problems) == 2
            assert tg.generation == 2


def test_bad_requests_and_arguments_get_clear_errors(up, engine):
    tg = engine()
    with pytest.raises(InvalidRequestError, match="not JSON"):
        tg.send("{this is not json")
    with pytest.raises(InvalidRequestError, match="not JSON"):
        tg.send(b"\xff\xfe")
    with pytest.raises(TypeError, match="request must be a dict"):
        tg.send(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot be sent as JSON"):
        tg.send({"model": "gpt-4o", "messages": [], "x": object()})
    with pytest.raises(TypeError, match="tenant must be a str"):
        tg.send(chat(), tenant=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="deadline must be a number"):
        tg.send(chat(), deadline="soon")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="deadline must be a non-negative"):
        tg.send(chat(), deadline=-1)
    with pytest.raises(InvalidRequestError, match="cache 'sometimes'"):
        tg.send(chat(), cache="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="policy must be"):
        tollgate.Tollgate(b"version = 1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tg.reload()
    assert up.requests == 0


def test_metrics_and_stats(up, engine):
    tg = engine('[[budget]]\nname = "rpm"\nrequests_per_minute = 100\n[cache]\nenabled = true\n')
    tg.send(chat(), cache="force")
    tg.send(chat(), cache="force")
    stats = tg.stats()
    assert stats["generation"] == 1
    assert stats["budgets"][0]["name"] == "rpm"
    assert stats["cache"]["hits"] == 1
    assert up.requests == 1
    assert "tollgate_" in tg.metrics()


def test_close_ends_the_engine(up):
    with tollgate.Tollgate(policy(up)) as tg:
        assert not tg.closed
    assert tg.closed
    with pytest.raises(ClosedError):
        tg.send(chat())
