#!/usr/bin/env python3
"""Runs the Python clients (client.py) against one upstream in interleaved rounds and prints
the table of medians: req/s, p50, p99, client CPU per request, and the ratios the binding
targets (tollgate's asend >= aiohttp; the openai SDK over tollgate's transport >= the plain
openai SDK).

    run.py [--n N] [--c C] [--rounds R] [--testkit] [--clients a,b,...]

The upstream is BENCH_URL (default http://127.0.0.1:18080: start ../shared/bench's nginx first),
or with ``--testkit`` tollgate's test upstream started in a process of its own (for a short CI
run: it is not the neutral nginx, so its figures are not comparable with ../shared/bench's).
Exits non-zero when a client reports errors; the targets are reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = ["tollgate", "tollgate-openai", "httpx", "aiohttp", "openai"]

UPSTREAM = """
import sys, time, tollgate_testkit
up = tollgate_testkit.TestUpstream(words=40)
print(up.base_url.rsplit("/v1", 1)[0], flush=True)
sys.stdin.read()
up.close()
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--c", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--testkit", action="store_true")
    p.add_argument("--clients", default=",".join(CLIENTS))
    a = p.parse_args()
    clients = a.clients.split(",")
    env = dict(os.environ)
    upstream = None
    if a.testkit:
        upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert upstream.stdout is not None
        env["BENCH_URL"] = upstream.stdout.readline().strip()
    results: Dict[str, List[Dict[str, Any]]] = {c: [] for c in clients}
    failed = False
    try:
        # One warm-up run each, then the rounds, interleaved.
        for r in range(a.rounds + 1):
            for c in clients:
                n = max(a.n // 10, a.c) if r == 0 else a.n
                out = subprocess.run(
                    [sys.executable, os.path.join(HERE, "client.py"), c, str(n), str(a.c)],
                    env=env, capture_output=True, text=True, timeout=600,
                )
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    sys.exit(f"{c}: exit {out.returncode}")
                line = json.loads(out.stdout.strip().splitlines()[-1])
                if line["errors"]:
                    print(out.stderr, file=sys.stderr)
                    failed = True
                if r > 0:
                    print(json.dumps(line), flush=True)
                    results[c].append(line)
    finally:
        if upstream is not None:
            upstream.communicate("", timeout=30)
    med: Dict[str, Dict[str, float]] = {}
    print(f"\nmedians of {a.rounds} interleaved rounds, N = {a.n}, C = {a.c}, upstream {env.get('BENCH_URL', 'http://127.0.0.1:18080')}")
    print(f"{'client':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>11}")
    for c in clients:
        rs = results[c]
        m = {
            "rps": statistics.median(x["rps"] for x in rs),
            "p50": statistics.median(x["p50_ms"] for x in rs),
            "p99": statistics.median(x["p99_ms"] for x in rs),
            "cpu_us": statistics.median(x["cpu_s"] / x["n"] * 1e6 for x in rs),
        }
        med[c] = m
        print(f"{rs[0]['client']:<22} {m['rps']:>9.0f} {m['p50']:>8.2f} {m['p99']:>8.2f} {m['cpu_us']:>11.0f}")
    if "tollgate" in med and "aiohttp" in med:
        ratio = med["tollgate"]["rps"] / med["aiohttp"]["rps"]
        print(f"tollgate asend / aiohttp req/s: {ratio:.2f} (target >= 1: {'met' if ratio >= 1 else 'MISSED'})")
    if "tollgate-openai" in med and "openai" in med:
        ratio = med["tollgate-openai"]["rps"] / med["openai"]["rps"]
        print(f"openai SDK over tollgate / plain openai SDK req/s: {ratio:.2f} (target >= 1: {'met' if ratio >= 1 else 'MISSED'})")
    if failed:
        sys.exit("a client reported errors")


if __name__ == "__main__":
    main()
