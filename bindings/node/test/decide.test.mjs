// The decide API (admit / settle), policies (bad policy, reload, watch), stats and metrics.
import assert from 'node:assert/strict'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import {
  Attempt,
  DeniedError,
  GaveUpError,
  InvalidRequestError,
  Permit,
  PolicyError,
  Tollgate,
} from '../index.js'
import { oneTargetPolicy, openCircuit } from './helpers.mjs'

const perTenant = (rpm, extra = '') => `version = 1
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = ${rpm}
${extra}`

test('admit goes, then denies with the budget that decided', () => {
  const tg = new Tollgate(perTenant(2))
  const call = { model: 'gpt-4o', tenant: 'acme', promptTokens: 100, maxTokens: 50 }
  const a = tg.admit(call)
  const b = tg.admit(call)
  assert.equal(a.kind, 'go')
  assert.equal(b.kind, 'go')
  assert.ok(a.permit instanceof Permit)
  const info = a.permit.info()
  assert.deepEqual(info.budgets, [['per-tenant', 'tenant=acme']])
  assert.equal(info.reservedTokens, 150)
  const c = tg.admit(call)
  assert.equal(c.kind, 'deny')
  assert.ok(c.error instanceof DeniedError)
  assert.equal(c.error.code, 'budget_exhausted')
  assert.equal(c.error.budget, 'per-tenant')
  assert.equal(c.error.key, 'tenant=acme')
  assert.equal(c.error.limit, 'requests_per_minute')
  assert.ok(c.error.retryAfterMs > 0)
  // Another tenant has its own budget.
  assert.equal(tg.admit({ ...call, tenant: 'globex' }).kind, 'go')
  tg.settle(a.permit, { status: 200 })
  tg.settle(b.permit, { status: 200 })
})

test('admit says wait when the policy allows waiting', () => {
  const tg = new Tollgate(`version = 1
[[budget]]
name = "rps"
requests_per_second = 1
burst = 1
when_exhausted = { wait_up_to = "5s" }
`)
  const a = tg.admit({ model: 'gpt-4o', promptTokens: 1 })
  assert.equal(a.kind, 'go')
  const w = tg.admit({ model: 'gpt-4o', promptTokens: 1 })
  assert.equal(w.kind, 'wait')
  assert.equal(w.budget, 'rps')
  assert.ok(w.afterMs > 0 && w.afterMs <= 1000, `afterMs ${w.afterMs}`)
  assert.equal(w.limit, 'requests_per_second')
  a.permit.release()
})

test('admit counts a prompt given as text or as a request body', () => {
  const tg = new Tollgate('version = 1')
  const text = tg.admit({ model: 'gpt-4o', prompt: 'Hello, world!', maxTokens: 10 })
  assert.equal(text.permit.info().promptTokens, 4)
  assert.equal(text.permit.info().exactPrompt, true)
  const body = { model: 'gpt-4o', messages: [{ role: 'user', content: 'Hello, world!' }], max_tokens: 7 }
  const req = tg.admit({ model: 'gpt-4o', request: body })
  assert.ok(req.permit.info().promptTokens > 4)
  assert.equal(req.permit.info().completionAllowance, 7)
  text.permit.release()
  req.permit.release()
  const bad = tg.admit({ model: 'gpt-4o', request: { model: 'gpt-4o' } })
  assert.equal(bad.kind, 'deny')
  assert.equal(bad.error.name, 'InvalidRequestError')
})

test('settle reconciles usage: done with the charge', () => {
  const tg = new Tollgate(perTenant(100, 'tokens_per_minute = 100000'))
  const { permit } = tg.admit({ model: 'gpt-4o', tenant: 'acme', promptTokens: 100, maxTokens: 200 })
  const v = tg.settle(permit, {
    status: 200,
    latencyMs: 120,
    usage: { prompt_tokens: 100, completion_tokens: 20, prompt_tokens_details: { cached_tokens: 40 } },
  })
  assert.equal(v.kind, 'done')
  assert.equal(v.settlement.reservedTokens, 300)
  assert.equal(v.settlement.tokens, 120)
  assert.ok(v.settlement.cost.total > 0)
  assert.ok(v.settlement.cost.cachedInput > 0)
  assert.equal(permit.settled, true)
  assert.throws(() => tg.settle(permit, { status: 200 }), /already settled/)
  const stats = tg.stats()
  assert.equal(stats.budgets[0].name, 'per-tenant')
  assert.equal(stats.budgets[0].admitted, 1)
  assert.equal(stats.budgets[0].tokens, 120)
})

test('settle of a failed attempt: retry with state, then give up', () => {
  const tg = new Tollgate(`version = 1
[retry]
max_attempts = 2
backoff = { base = "100ms", max = "200ms" }
`)
  const first = tg.admit({ model: 'gpt-4o', promptTokens: 10 })
  const retry = tg.settle(first.permit, { status: 503, headers: { 'retry-after-ms': '250' } })
  assert.equal(retry.kind, 'retry')
  assert.equal(retry.afterMs, 250)
  assert.ok(retry.attempt instanceof Attempt)
  const second = tg.admit({ model: 'gpt-4o', promptTokens: 10, attempt: retry.attempt })
  assert.equal(second.kind, 'go')
  assert.equal(second.permit.info().attempt, 2)
  const gaveUp = tg.settle(second.permit, { status: 503 })
  assert.equal(gaveUp.kind, 'give_up')
  assert.ok(gaveUp.error instanceof GaveUpError)
  assert.equal(gaveUp.error.code, 'attempts_exhausted')
  assert.equal(gaveUp.error.history.length, 2)
  assert.equal(gaveUp.error.history[0].outcome, 'status_503')
  // A client error is not retried; a transport failure is classified by its code.
  const c = tg.admit({ model: 'gpt-4o', promptTokens: 10 })
  assert.equal(tg.settle(c.permit, { status: 400 }).error.code, 'not_retryable')
  const d = tg.admit({ model: 'gpt-4o', promptTokens: 10 })
  assert.equal(tg.settle(d.permit, { failure: 'timeout_first_byte' }).kind, 'retry')
  const e = tg.admit({ model: 'gpt-4o', promptTokens: 10 })
  assert.throws(() => tg.settle(e.permit, { failure: 'bogus' }), /bogus/)
})

// tollgate's failure codes (Failure::code in the Rust API), as attempt records report them.
const FAILURE_CODES = [
  'connect_refused',
  'connect_reset',
  'connect_dns',
  'connect_tls',
  'connect_other',
  'timeout_connect',
  'timeout_first_byte',
  'timeout_idle',
  'timeout_total',
  'malformed',
  'cut_stream',
  'status_429',
  'status_503',
]
// Short forms settle also takes, with the code they stand for.
const FAILURE_ALIASES = {
  connect: 'connect_other',
  reset: 'connect_reset',
  dns: 'connect_dns',
  tls: 'connect_tls',
  timeout: 'timeout_total',
}

test('settle takes every failure code (and the short forms), and records the code', () => {
  const tg = new Tollgate('version = 1\n[retry]\nmax_attempts = 1\n')
  const cases = [...FAILURE_CODES.map((c) => [c, c]), ...Object.entries(FAILURE_ALIASES)]
  for (const [failure, code] of cases) {
    const { permit } = tg.admit({ model: 'gpt-4o', promptTokens: 10 })
    const v = tg.settle(permit, { failure })
    assert.equal(v.kind, 'give_up', failure)
    assert.equal(v.error.history.length, 1, failure)
    assert.equal(v.error.history[0].outcome, code, failure)
  }
})

test('settle refuses an unknown failure code, naming the codes; the permit stays unsettled', () => {
  const tg = new Tollgate(`version = 1
[[budget]]
name = "one-at-a-time"
concurrency = 1
`)
  const { permit } = tg.admit({ model: 'gpt-4o', promptTokens: 1 })
  for (const bad of ['bogus', 'Reset', 'status_200', 'status_5xx']) {
    assert.throws(
      () => tg.settle(permit, { failure: bad }),
      (e) => {
        assert.ok(e instanceof InvalidRequestError, e.stack)
        assert.equal(e.code, 'invalid_argument')
        assert.ok(e.message.includes(`'${bad}' is not a failure code`), e.message)
        for (const code of ['connect_refused', 'timeout_first_byte', 'cut_stream', 'status_NNN']) {
          assert.ok(e.message.includes(code), `${code} in: ${e.message}`)
        }
        return true
      },
    )
  }
  // The refused settle took nothing: the permit still holds the one slot, and settles.
  assert.equal(permit.settled, false)
  assert.equal(tg.admit({ model: 'gpt-4o', promptTokens: 1 }).kind, 'deny')
  assert.equal(tg.settle(permit, { failure: 'timeout_first_byte' }).kind, 'retry')
  assert.equal(permit.settled, true)
  const next = tg.admit({ model: 'gpt-4o', promptTokens: 1 })
  assert.equal(next.kind, 'go')
  next.permit.release()
})

test('a released permit frees its concurrency slot', () => {
  const tg = new Tollgate(`version = 1
[[budget]]
name = "one-at-a-time"
concurrency = 1
`)
  const a = tg.admit({ model: 'gpt-4o', promptTokens: 1 })
  const b = tg.admit({ model: 'gpt-4o', promptTokens: 1 })
  assert.equal(b.kind, 'deny')
  assert.equal(b.error.code, 'concurrency')
  assert.equal(a.permit.release(), true)
  assert.equal(a.permit.release(), false)
  const c = tg.admit({ model: 'gpt-4o', promptTokens: 1 })
  assert.equal(c.kind, 'go')
  tg.settle(c.permit, { status: 200 })
})

test('a bad policy is refused with every problem', () => {
  assert.throws(
    () =>
      new Tollgate(`version = 1
[[budget]]
name = "a"
tokens_per_minute = -5
[[budget]]
name = "b"
requests_per_minute = "many"
`),
    (e) => {
      assert.ok(e instanceof PolicyError)
      assert.equal(e.code, 'policy')
      assert.equal(e.problems.length, 2, e.problems.join('\n'))
      assert.match(e.problems[0], /line 4/)
      assert.match(e.problems[0], /tokens_per_minute/)
      return true
    },
  )
  assert.throws(() => new Tollgate({ path: '/nonexistent/policy.toml' }), PolicyError)
})

test('a refused reload keeps the old limits; an accepted one applies at once', () => {
  const tg = new Tollgate(perTenant(1))
  assert.throws(() => tg.reload('version = 1\n[[budget]]\nname = "x"\nconcurrency = 0\n'), PolicyError)
  assert.equal(tg.generation, 1)
  const call = { model: 'gpt-4o', tenant: 'acme', promptTokens: 1 }
  const a = tg.admit(call)
  assert.equal(a.kind, 'go')
  assert.equal(tg.admit(call).kind, 'deny')
  assert.equal(tg.reload(perTenant(1000)), 2)
  assert.equal(tg.admit(call).kind, 'go')
  const report = tg.reloadReport(perTenant(1000).replace('per-tenant', 'renamed'))
  assert.deepEqual(report.added, ['renamed'])
  assert.deepEqual(report.removed, ['per-tenant'])
})

test('watch reloads a changed file and reports a refused one', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-watch-'))
  const file = join(dir, 'policy.toml')
  writeFileSync(file, perTenant(1))
  const tg = new Tollgate({ path: file })
  const w = tg.watch(file, { intervalMs: 20 })
  t.after(() => w.close())
  const reloaded = new Promise((resolve) => w.once('reload', resolve))
  writeFileSync(file, perTenant(50))
  const report = await reloaded
  assert.equal(report.generation, 2)
  assert.equal(tg.generation, 2)
  const refused = new Promise((resolve) => w.once('refused', resolve))
  writeFileSync(file, 'version = 1\n[[budget]]\nname = "x"\nrequests_per_minute = -1\n')
  const err = await refused
  assert.ok(err instanceof PolicyError)
  assert.ok(err.problems.length >= 1)
  assert.equal(tg.generation, 2)
  await w.close()
})

test('metrics are Prometheus text', () => {
  const tg = new Tollgate(perTenant(10))
  const { permit } = tg.admit({ model: 'gpt-4o', tenant: 'acme', promptTokens: 1 })
  tg.settle(permit, { status: 200, usage: { promptTokens: 1, completionTokens: 1 } })
  const text = tg.metrics()
  assert.match(text, /# TYPE tollgate_attempts_total counter/)
  assert.match(text, /tollgate_policy_generation 1/)
})

test('many names: past the interned table names go as arguments', () => {
  const tg = new Tollgate(perTenant(5))
  for (let i = 0; i < 5000; i++) {
    const d = tg.admit({ model: 'gpt-4o', tenant: `tenant-${i}`, promptTokens: 1 })
    assert.equal(d.kind, 'go')
    assert.deepEqual(d.permit.info().budgets, [['per-tenant', `tenant=tenant-${i}`]])
    tg.settle(d.permit, { status: 200 })
  }
})

test('admit says wait (no budget) while the only target is open, within max_retry_after', async () => {
  const tg = new Tollgate(oneTargetPolicy({ maxRetryAfter: '60s' }))
  openCircuit(tg)
  const call = { model: 'gpt-4o', promptTokens: 10, maxTokens: 10 }
  for (const d of [tg.admit(call), await tg.admitAsync(call)]) {
    assert.equal(d.kind, 'wait', JSON.stringify(d))
    // Until the circuit half-opens: its open time, and a nanosecond.
    assert.ok(d.afterMs > 29_000 && d.afterMs <= 30_000.001, `afterMs ${d.afterMs}`)
    assert.equal(d.budget, '', 'no budget made it wait')
    assert.equal(d.key, '')
    assert.equal(d.limit, null)
  }
})

test('admit refuses with unavailable when the open circuit outlasts max_retry_after', async () => {
  const tg = new Tollgate(oneTargetPolicy({ maxRetryAfter: '10s' }))
  openCircuit(tg)
  const call = { model: 'gpt-4o', promptTokens: 10, maxTokens: 10 }
  for (const d of [tg.admit(call), await tg.admitAsync(call)]) {
    assert.equal(d.kind, 'deny', JSON.stringify(d))
    assert.ok(d.error instanceof DeniedError)
    assert.equal(d.error.code, 'unavailable')
    assert.ok(d.error.retryAfterMs > 29_000 && d.error.retryAfterMs <= 30_000.001, `${d.error.retryAfterMs}`)
  }
})
