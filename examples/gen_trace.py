#!/usr/bin/env python3
"""Generates examples/trace.jsonl, the trace that `tollgate demo` replays.

Deterministic (fixed seed, standard library only): run it again and the file is byte for byte the
same. Usage, from the repository root:

    python3 examples/gen_trace.py > examples/trace.jsonl

The trace is about two virtual minutes of traffic from eight tenants against
examples/policy.toml:

- seven steady tenants with different rates, models and call sizes: interactive calls
  (priority 1, small max_tokens, short latency) and batch calls (priority 0, long latency);
- "burstco", a noisy tenant that fires bursts of large gpt-4o calls: its per-tenant token budget
  (tokens_per_minute burst 20k) runs dry, so calls wait up to 2 s and then are denied;
- "globex" runs a batch job of many slow gpt-4o-mini calls at once, which fills its
  per-tenant concurrency (32) so later calls of the job wait for a slot;
- a few lines that each show one feature: a chat request body, prompt text, usage with cached
  and reasoning tokens, 429 and 500 statuses (not billed), response headers (ignored today), a
  prompt that does not fit the context window, a model without a price under a spend budget.

Rows are written in time order; `tollgate simulate` sorts by at_ms anyway.
"""

import json
import random

SEED = 20261123
DURATION_MS = 120_000

rng = random.Random(SEED)
rows = []


def usage(prompt, max_tokens, cached=0, reasoning=0):
    """An OpenAI usage object for a call that answered with up to max_tokens tokens."""
    completion = rng.randint(max(1, max_tokens // 8), max_tokens)
    u = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        u["prompt_tokens_details"] = {"cached_tokens": min(cached, prompt)}
    if reasoning:
        u["completion_tokens_details"] = {"reasoning_tokens": min(reasoning, completion)}
    return u


def call(at_ms, tenant, model, prompt_tokens, max_tokens, priority, latency, **extra):
    row = {
        "at_ms": int(at_ms),
        "tenant": tenant,
        "model": model,
        "priority": priority,
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
        "latency_ms": int(latency),
    }
    row.update(extra)
    if "usage" not in row and "status" not in row:
        cached = prompt_tokens // 2 if rng.random() < 0.25 else 0
        row["usage"] = usage(prompt_tokens, max_tokens, cached=cached)
    rows.append(row)


def poisson(rate_per_s, start_ms=0, end_ms=DURATION_MS):
    """Arrival times (ms) of a Poisson process."""
    t = start_ms
    while True:
        t += rng.expovariate(rate_per_s) * 1000.0
        if t >= end_ms:
            return
        yield t


# Steady tenants: (name, calls per second, models, prompt range, max_tokens, priority, latency).
STEADY = [
    ("acme", 0.9, ["gpt-4o"], (200, 1200), 512, 1, (300, 1500)),
    ("hooli", 0.8, ["gpt-4o-mini"], (100, 800), 256, 1, (200, 900)),
    ("initech", 0.6, ["deepseek-chat"], (300, 2000), 1024, 0, (800, 3000)),
    ("umbrella", 0.45, ["gpt-4o", "gpt-4o-mini"], (500, 3000), 800, 0, (600, 2500)),
    ("stark", 0.25, ["gpt-4o"], (2000, 6000), 1500, 1, (1200, 3000)),
    ("wayne", 0.45, ["deepseek-chat", "gpt-4o-mini"], (150, 900), 400, 1, (250, 1200)),
    ("globex", 0.5, ["gpt-4o-mini"], (200, 700), 300, 0, (500, 2000)),
]

for name, rate, models, (lo, hi), max_tokens, priority, (lat_lo, lat_hi) in STEADY:
    for t in poisson(rate):
        call(
            t,
            name,
            rng.choice(models),
            rng.randint(lo, hi),
            max_tokens,
            priority,
            rng.randint(lat_lo, lat_hi),
        )

# The noisy tenant: a trickle, plus three bursts of large gpt-4o calls (1500-2500 prompt tokens,
# max_tokens 1000) a few milliseconds apart. Its per-tenant budget allows ~20k tokens at once and
# refills 2.5k tokens a second, so each burst admits a handful, queues some for up to 2 s, and
# denies the rest. A third of the burst is interactive (priority 1) and jumps the queue.
for t in poisson(0.3):
    call(t, "burstco", "gpt-4o", rng.randint(300, 900), 500, 1, rng.randint(300, 1200))
for start in (20_000, 55_000, 95_000):
    t = float(start)
    for _ in range(40):
        t += rng.uniform(5, 60)
        priority = 1 if rng.random() < 0.33 else 0
        call(t, "burstco", "gpt-4o", rng.randint(1500, 2500), 1000, priority, rng.randint(800, 2500))

# globex's batch job: 45 slow gpt-4o-mini calls within a second. The per-tenant concurrency of 32
# fills up; the rest wait for a slot (up to 2 s), and those that find none in time are denied.
t = 70_000.0
for _ in range(45):
    t += rng.uniform(5, 25)
    call(t, "globex", "gpt-4o-mini", rng.randint(150, 400), 200, 0, rng.randint(1500, 3000))

# One line per feature.
call(
    5_000, "acme", "gpt-4o", 0, 0, 1, 700,
    note="a chat request body: counted with message overhead; max_tokens read from it",
    usage={"prompt_tokens": 31, "completion_tokens": 120, "total_tokens": 151},
)
rows[-1].pop("prompt_tokens")
rows[-1].pop("max_tokens")
rows[-1]["request"] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Summarise the plot of Hamlet in two sentences."},
    ],
    "max_tokens": 200,
}
call(
    8_000, "hooli", "gpt-4o-mini", 0, 300, 1, 400,
    note="prompt text: counted exactly with o200k_base",
    usage={"prompt_tokens": 24, "completion_tokens": 90, "total_tokens": 114},
)
rows[-1].pop("prompt_tokens")
rows[-1]["prompt"] = (
    "Translate to French: The budget you write holds exactly, in every process and every path."
)
call(
    12_000, "stark", "gpt-4o", 5200, 1500, 1, 2600,
    note="usage with cached prompt tokens and reasoning tokens: settled at the cached price",
    usage=usage(5200, 1500, cached=4096, reasoning=300),
)
call(
    30_000, "acme", "gpt-4o", 800, 512, 1, 900, status=429,
    headers={"retry-after": "2", "x-ratelimit-remaining-requests": "0"},
    note="429 from the provider: not billed; headers are accepted and ignored today",
)
call(
    45_000, "umbrella", "gpt-4o", 1500, 800, 0, 3000, status=500,
    note="500 from the provider: not billed",
)
call(
    60_000, "initech", "deepseek-chat", 1200, 1024, 0, 2000, status=200,
    note="status 200 without usage: the reservation is kept",
)
call(
    66_000, "stark", "gpt-4o", 127_000, 4096, 1, 0,
    note="prompt plus max_tokens exceed gpt-4o's 128k context window: denied before any budget",
    status=400,
)
call(
    80_000, "wayne", "my-finetune", 600, 300, 1, 800,
    note="a model without a price under the org-monthly spend budget: denied (unknown_price)",
)

rows.sort(key=lambda r: r["at_ms"])  # stable: ties keep generation order

print("# tollgate example trace: ~2 virtual minutes, 8 tenants. Generated by examples/gen_trace.py")
print("# (seed %d); replay it with `tollgate demo` or" % SEED)
print("# `tollgate simulate --policy examples/policy.toml --trace examples/trace.jsonl`.")
for r in rows:
    print(json.dumps(r, separators=(",", ":")))
