#!/usr/bin/env python3
"""A small discrete-event model of the retry path for the traces of gen.py, to measure retry
budgets that `tollgate simulate` cannot run because tollgate does not implement them: Envoy's
retry budget (concurrent retries at most `budget_percent` of active requests, at least
`min_retry_concurrency`).

The model follows examples/retry_budget/policy.toml (one target, no breaker, max_attempts 3,
full-jitter backoff from 500 ms doubling up to 8 s, Retry-After honoured exactly) and the trace
format (incidents, `then` lists). It also runs gRPC A6 (with the refill and 429 cost of 0012) so
its figures can be compared with the simulator's: jitter draws differ, so counts match only
roughly. An Envoy retry holds its slot from the decision to retry until that retry ends (its
backoff included), and active requests are attempts in flight.

    python3 examples/retry_budget/model.py TRACE.jsonl envoy [PERCENT MIN] [--window FROM TO]
    python3 examples/retry_budget/model.py TRACE.jsonl a6 [REFILL COST] [--window FROM TO]

The window (milliseconds) is where amplification is measured: by default the first incident.
"""

import heapq
import json
import random
import sys


def load(path):
    rows, incidents = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            o = json.loads(line)
            if "incident" in o:
                incidents.append(o["incident"])
            else:
                rows.append(o)
    return rows, incidents


def outcome(row, n, at_ms, incidents):
    """(failed, server delay in ms or None, latency ms) of attempt n of row admitted at at_ms."""
    for inc in incidents:
        if inc["from_ms"] <= at_ms < inc["to_ms"]:
            ra = inc.get("headers", {}).get("retry-after")
            return True, inc["status"], (float(ra) * 1000 if ra else None), inc.get("latency_ms", 0)
    spec = row if n == 1 else (row.get("then", [])[n - 2:n - 1] or [{}])[0]
    status = spec.get("status")
    if status is None or status < 400:
        return False, 200, None, spec.get("latency_ms", row.get("latency_ms", 0))
    ra = spec.get("headers", {}).get("retry-after")
    return True, status, (float(ra) * 1000 if ra else None), spec.get("latency_ms", row["latency_ms"])


class A6:
    def __init__(self, refill=0.0, cost=1.0, max_tokens=10.0, ratio=0.1):
        self.max, self.ratio, self.refill, self.cost = max_tokens, ratio, refill, cost
        self.tokens, self.t = max_tokens, 0.0

    def _fill(self, now):
        self.tokens = min(self.max, self.tokens + self.refill * (now - self.t) / 1000)
        self.t = now

    def success(self, now):
        self.tokens = min(self.max, self.tokens + self.ratio)

    def failure(self, now, status, delay):
        self._fill(now)
        c = self.cost if status == 429 and delay is not None else 1.0
        self.tokens = max(0.0, self.tokens - c)

    def allows(self, now, active):
        return self.tokens > self.max / 2

    def start_retry(self):
        pass

    def end_retry(self):
        pass


class Envoy:
    def __init__(self, percent=20.0, minimum=3):
        self.percent, self.min, self.retries = percent, minimum, 0

    def success(self, now):
        pass

    def failure(self, now, status, delay):
        pass

    def allows(self, now, active):
        return self.retries < max(self.min, self.percent / 100 * active)

    def start_retry(self):
        self.retries += 1

    def end_retry(self):
        self.retries -= 1


def run(path, budget, seed=1):
    rows, incidents = load(path)
    rng = random.Random(seed)
    events = []  # (time, kind 0 end / 1 start, seq, call, attempt)
    seq = 0
    for i, r in enumerate(rows):
        heapq.heappush(events, (r["at_ms"], 1, seq, i, 1))
        seq += 1
    active = 0
    attempts = [[] for _ in rows]
    result = [None] * len(rows)
    inflight = {}
    while events:
        now, kind, _, i, n = heapq.heappop(events)
        if kind == 1:
            active += 1
            attempts[i].append(now)
            inflight[i] = outcome(rows[i], n, now, incidents)
            heapq.heappush(events, (now + inflight[i][3], 0, seq, i, n))
            seq += 1
            continue
        active -= 1
        failed, status, delay, _ = inflight.pop(i)
        if n > 1:
            budget.end_retry()
        if not failed:
            budget.success(now)
            result[i] = "done"
            continue
        budget.failure(now, status, delay)
        if n >= 3:
            result[i] = "attempts_exhausted"
            continue
        if not budget.allows(now, active):
            result[i] = "retry_budget_exhausted"
            continue
        after = delay if delay is not None else rng.uniform(0, min(8000, 500 * 2 ** (n - 1)))
        budget.start_retry()
        heapq.heappush(events, (now + after, 1, seq, i, n + 1))
        seq += 1
    return rows, attempts, result


def main():
    path, kind = sys.argv[1], sys.argv[2]
    rest = sys.argv[3:]
    window = None
    if "--window" in rest:
        k = rest.index("--window")
        window = {"from_ms": int(rest[k + 1]), "to_ms": int(rest[k + 2])}
        rest = rest[:k] + rest[k + 3:]
    args = [float(a) for a in rest]
    budget = Envoy(*args) if kind == "envoy" else A6(*args)
    rows, attempts, result = run(path, budget)
    if window is None:
        with open(path) as f:
            window = next((json.loads(l)["incident"] for l in f if l.startswith('{"incident"')),
                          None)
    m = {
        "calls": len(rows),
        "done": result.count("done"),
        "budget": result.count("retry_budget_exhausted"),
        "att/call": round(sum(map(len, attempts)) / len(rows), 3),
    }
    if window:
        lo, hi = window["from_ms"], window["to_ms"]
        arrived = sum(lo <= r["at_ms"] < hi for r in rows)
        sent = sum(lo <= a < hi for a_s in attempts for a in a_s)
        m["amp"] = round(sent / arrived, 3)
        retried = [a for r, a_s in zip(rows, attempts) if r["at_ms"] >= hi for a in a_s[1:]]
        m["resume_s"] = round((min(retried) - hi) / 1000, 1) if retried else None
        starved = [r["at_ms"] for r, res in zip(rows, result)
                   if r["at_ms"] >= hi and res == "retry_budget_exhausted"]
        m["starved_s"] = round((max(starved) - hi) / 1000, 1) if starved else 0.0
    print(json.dumps(m))


if __name__ == "__main__":
    main()
