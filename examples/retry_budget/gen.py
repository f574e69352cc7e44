#!/usr/bin/env python3
"""Generates the traces behind docs/decisions/0012-retry-budget-for-llm-traffic.md, and measures
a retry budget on them with `tollgate simulate`.

Deterministic (fixed seeds, standard library only): the same files every run. From the
repository root:

    python3 examples/retry_budget/gen.py traces            # writes examples/retry_budget/*.jsonl
    python3 examples/retry_budget/gen.py measure [TOLLGATE] # every option x every trace, tables

`measure` also replays examples/incident.jsonl under examples/policy.toml (breakers, fallback
routes) with each option. The traces below all call model "m", routed to upstream "api" by examples/retry_budget/policy.toml
(circuit breaker off, so that the retry budget alone decides; max_attempts 3, backoff 500ms..8s
with full jitter). Successful attempts take 500 ms, failed ones 50 ms.

- quiet_burst: a low-volume client, 1 call/s for 5 minutes; from 60 s to 90 s every attempt
  answers 503; after that, single failures (503 once, then success) at 91, 93, 97, 105, 121,
  153, 217 s (recovery + 1, 3, 7, 15, 31, 63, 127 s) probe when retries are allowed again.
- steady_7pct: the demo's case, 20 calls/s for 2 minutes; every attempt independently fails
  with 7 %: 5 % 429 with Retry-After: 1 and 2 % 503.
- steady_7pct_503: the same with all 7 % as 503 (no server-directed delay).
- steady_7pct_fast: steady_7pct at the demo's rate, 150 calls/s for 1 minute.
- storm: a hard outage at high rate, 100 calls/s for 4 minutes; every attempt from 60 s to
  180 s answers 503.
- storm_429: the same outage as 429 with Retry-After: 1.
- slow_storm: a hard outage at a low rate, 2 calls/s for 4 minutes, 503 from 60 s to 180 s.
- partial_429: 100 calls/s for 4 minutes; from 60 s to 180 s each attempt independently
  answers 429 with Retry-After: 1 with probability 1/2 (an upstream shedding half its load).
- trickle_storm: the same at 0.25 call/s (one call every 4 s) for 20 minutes, 503 from 5 to
  15 minutes: the worst case of a retry allowance per second.
The outage traces carry the same probes as quiet_burst after their recovery (a single 503 at
recovery + 1, 3, 7, 15, 31, 63, 127 s; in trickle_storm, the calls nearest those times).

Measured per option: calls, calls done, calls given up for retry_budget_exhausted, attempts per
call; for the traces with an outage, amplification (attempts sent during the outage / calls that
arrived during it), `resume` (from recovery to the first retry of a call that arrived after
it) and `starved` (from recovery to the last call after it that gave up on the budget).
"""

import json
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

OK = {"prompt_tokens": 200, "completion_tokens": 100, "total_tokens": 300}
E503 = {"status": 503, "latency_ms": 50}
E429 = {"status": 429, "headers": {"retry-after": "1"}, "latency_ms": 50}

# name -> (incident window (from_ms, to_ms) or None, description)
WINDOWS = {
    "incident": (10_000, 40_000),
    "quiet_burst": (60_000, 90_000),
    "steady_7pct": None,
    "steady_7pct_503": None,
    "storm": (60_000, 180_000),
    "storm_429": (60_000, 180_000),
    "slow_storm": (60_000, 180_000),
    "trickle_storm": (300_000, 900_000),
    "partial_429": (60_000, 180_000),
    "steady_7pct_fast": None,
}

PROBES = (1, 3, 7, 15, 31, 63, 127)


def row(at_ms, outcomes=()):
    """A call at at_ms whose attempts end as `outcomes` say, then succeed."""
    r = {"at_ms": int(at_ms), "model": "m", "latency_ms": 500, "usage": OK}
    if outcomes:
        first, rest = outcomes[0], list(outcomes[1:])
        r.pop("usage")
        r.update(first)
        if rest:
            r["then"] = rest + [{"usage": OK, "latency_ms": 500}]
        else:
            r["then"] = [{"usage": OK, "latency_ms": 500}]
    return r


def incident(status_like, from_ms, to_ms):
    inc = {"upstream": "api", "model": "m", "from_ms": from_ms, "to_ms": to_ms}
    inc.update(status_like)
    return {"incident": inc}


def quiet_burst():
    out = [incident(E503, 60_000, 90_000)]
    probes = {90 + p for p in PROBES}
    for s in range(300):
        out.append(row(s * 1000 + 100, [E503] if s in probes else ()))
    return out


def steady(seed, mix, rate=20.0, duration_ms=120_000):
    rng = random.Random(seed)
    out = []
    t = 0.0
    while True:
        t += rng.expovariate(rate) * 1000.0
        if t >= duration_ms:
            return out
        outcomes = []
        for _ in range(3):  # how each of the (up to) three attempts ends
            x = rng.random()
            pick = None
            for p, o in mix:
                if x < p:
                    pick = o
                    break
                x -= p
            outcomes.append(pick)
        # trim trailing successes; a success ends the call anyway
        k = next((i for i, o in enumerate(outcomes) if o is None), 3)
        out.append(row(t, outcomes[:k]))


def storm(rate, failure, window=(60_000, 180_000), duration_ms=240_000):
    out = [incident(failure, *window)]
    step = 1000.0 / rate
    n = int(duration_ms / step)
    probes = {min(range(n), key=lambda i: abs(i * step - window[1] - p * 1000)) for p in PROBES}
    out.extend(row(i * step, [E503] if i in probes else ()) for i in range(n))
    return out


def partial_429(seed):
    rng = random.Random(seed)
    out = []
    for i in range(24_000):
        at = i * 10
        outcomes = []
        for k in range(3):
            # attempts k > 0 start about 1 s later (Retry-After: 1)
            if 60_000 <= at + 1000 * k < 180_000 and rng.random() < 0.5:
                outcomes.append(E429)
            else:
                break
        out.append(row(at, outcomes))
    return out


TRACES = {
    "quiet_burst": quiet_burst,
    "steady_7pct": lambda: steady(7, [(0.05, E429), (0.02, E503)]),
    "steady_7pct_503": lambda: steady(7, [(0.07, E503)]),
    "storm": lambda: storm(100, E503),
    "storm_429": lambda: storm(100, E429),
    "slow_storm": lambda: storm(2, E503),
    "trickle_storm": lambda: storm(0.25, E503, (300_000, 900_000), 1_200_000),
    "partial_429": lambda: partial_429(9),
    "steady_7pct_fast": lambda: steady(8, [(0.05, E429), (0.02, E503)], 150.0, 60_000),
}


def write_traces():
    for name, make in TRACES.items():
        path = os.path.join(HERE, name + ".jsonl")
        with open(path, "w") as f:
            f.write("# generated by examples/retry_budget/gen.py (see its docstring)\n")
            for line in make():
                f.write(json.dumps(line, separators=(",", ":")) + "\n")


# The options measured: [retry] budget settings.
OPTIONS = {
    "A6 (before)": (0, 1),
    "A6 + refill 0.5/s": (0.5, 1),
    "A6 + 429 free": (0, 0),
    "A6 + 429 half": (0, 0.5),
    "A6 + refill 0.5/s + 429 free": (0.5, 0),
    "A6 + refill 0.5/s + 429 half": (0.5, 0.5),
    "A6 + refill 0.2/s + 429 half": (0.2, 0.5),
    "A6 + refill 1/s + 429 half": (1, 0.5),
}


def budget_line(refill, cost):
    return ("{ ratio = 0.1, max_tokens = 10, refill_per_second = %s, retry_after_cost = %s }"
            % (refill, cost))


def policy_with(budget, trace=""):
    if trace == "incident":
        with open(os.path.join(HERE, "..", "policy.toml")) as f:
            text = f.read()
        old = "budget = { ratio = 0.1, max_tokens = 10, refill_per_second = 0.5, retry_after_cost = 0.5 }"
    else:
        with open(os.path.join(HERE, "policy.toml")) as f:
            text = f.read()
        old = "budget = { ratio = 0.1, max_tokens = 10 }"
    assert old in text
    return text.replace(old, "budget = " + budget)


def trace_path(trace):
    if trace == "incident":
        return os.path.join(HERE, "..", "incident.jsonl")
    return os.path.join(HERE, trace + ".jsonl")


def measure_one(tollgate, policy_text, trace):
    ppath = "/tmp/tollgate-retry-budget-policy.toml"
    with open(ppath, "w") as f:
        f.write(policy_text)
    out = subprocess.run(
        [tollgate, "simulate", "--quiet", "--policy", ppath, "--trace", trace_path(trace)],
        check=True, capture_output=True, text=True).stdout
    calls = [json.loads(l) for l in out.splitlines() if l.strip()]
    window = WINDOWS[trace]
    m = {
        "calls": len(calls),
        "done": sum(c["decision"] == "done" for c in calls),
        "budget": sum(c["give_up"] == "retry_budget_exhausted" for c in calls),
        "attempts": sum(len(c["attempts"]) for c in calls),
    }
    if window:
        lo, hi = window
        arrived = sum(lo <= c["at_ms"] < hi for c in calls)
        sent = sum(lo <= a["at_ms"] < hi for c in calls for a in c["attempts"])
        m["amp"] = sent / arrived if arrived else 0.0
        # Time from recovery to the first retry made after it, and to the last call that gave
        # up on the budget after it.
        retried = [a["at_ms"] for c in calls for a in c["attempts"][1:] if a["at_ms"] >= hi
                   and c["at_ms"] >= hi]
        m["resume_s"] = (min(retried) - hi) / 1000 if retried else None
        starved = [c["at_ms"] for c in calls if c["at_ms"] >= hi
                   and c["give_up"] == "retry_budget_exhausted"]
        m["starved_until_s"] = (max(starved) - hi) / 1000 if starved else 0.0
    return m


def measure(tollgate):
    only = sys.argv[3:]
    for trace in ["incident"] + list(TRACES):
        if only and trace not in only:
            continue
        print(f"\n{trace}:")
        window = WINDOWS[trace]
        head = f"  {'option':30} {'calls':>6} {'done':>6} {'budget':>6} {'att/call':>8}"
        if window:
            head += f" {'amp(out)':>8} {'resume':>7} {'starved':>8}"
        print(head)
        for name, budget in OPTIONS.items():
            m = measure_one(tollgate, policy_with(budget_line(*budget), trace), trace)
            line = (f"  {name:30} {m['calls']:6} {m['done']:6} {m['budget']:6} "
                    f"{m['attempts'] / m['calls']:8.3f}")
            if window:
                resume = "-" if m["resume_s"] is None else f"{m['resume_s']:.1f}s"
                line += f" {m['amp']:8.3f} {resume:>7} {m['starved_until_s']:7.1f}s"
            print(line)
        if trace == "incident":
            continue  # fallback, breakers: beyond the model
        m = model_envoy(trace, window)
        line = (f"  {'Envoy 20 %, min 3 (model.py)':30} {m['calls']:6} {m['done']:6} "
                f"{m['budget']:6} {m['att/call']:8.3f}")
        if window:
            resume = "-" if m["resume_s"] is None else f"{m['resume_s']:.1f}s"
            line += f" {m['amp']:8.3f} {resume:>7} {m['starved_s']:7.1f}s"
        print(line)


def model_envoy(trace, window):
    span = ["--window", str(window[0]), str(window[1])] if window else []
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "model.py"), os.path.join(HERE, trace + ".jsonl"),
         "envoy", "20", "3"] + span, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["traces"]:
        write_traces()
    elif sys.argv[1:2] == ["measure"]:
        measure(sys.argv[2] if len(sys.argv) > 2 else "target/release/tollgate")
    else:
        print(__doc__)
        sys.exit(2)
