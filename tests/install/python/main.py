"""Install test of the Python wheel: `pip install --no-index OUT/tollgate-*.whl` into a fresh
venv outside the repository, then this script imports it, admits + settles, sends through the
test upstream whose base URL is the first argument (sync and asyncio), and checks a denial and
a refused policy. Exits non-zero on any failure."""

import asyncio
import sys

import tollgate
from tollgate import DeniedError, PolicyError, Tollgate

base = sys.argv[1]
assert "site-packages" in tollgate.__file__, tollgate.__file__
tg = Tollgate(f"""version = 1
[[upstream]]
name = "test"
base_url = "{base}"
[[route]]
model = "gpt-4o-mini"
targets = [{{ upstream = "test", model = "gpt-4o-mini" }}]
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 3
""")

d = tg.admit("gpt-4o-mini", tenant="acme", prompt_tokens=12)
assert d.kind == "go" and d.permit is not None
assert tg.settle(d.permit, status=200).kind == "done"

request = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hello from Python"}]}
r = tg.send(request, tenant="acme", deadline=30)
assert r.status == 200 and r.usage is not None and r.usage.completion_tokens == 5, r
assert r.content


async def main() -> None:
    r = await tg.asend(request, tenant="acme", deadline=30)
    assert r.status == 200 and r.content


asyncio.run(main())
try:
    tg.send(request, tenant="acme")
    raise SystemExit("the fifth call of a 3-a-minute budget was not denied")
except DeniedError as e:
    assert e.budget == "per-tenant"
try:
    Tollgate("version = 1\n[[budget]]\nname = 'x'\nrequests_per_minute = 0\n")
    raise SystemExit("a zero limit was accepted")
except PolicyError as e:
    assert e.problems
tg.close()
print(f"python: tollgate {tollgate.__version__} from the wheel: admit, settle, send, asend, denial: ok")
