// admitAsync against budgets kept in Redis: the same decisions as admit, and the event loop
// keeps running while Redis is asked. Needs `redis-server` on the PATH (.ci/run installs it
// with apt); each test starts its own on a free loopback port.
import assert from 'node:assert/strict'
import { test } from 'node:test'

import { DeniedError, Permit, Tollgate } from '../index.js'
import { redis } from './helpers.mjs'

const policy = (url, rpm, extra = '') => `version = 1
[redis]
url = "${url}"
key_prefix = "node"
on_failure = "fail_closed"
${extra}
[[budget]]
name = "fleet"
scope = ["tenant"]
requests_per_minute = ${rpm}
store = "redis"
`

const call = { model: 'gpt-4o', tenant: 'acme', promptTokens: 10, maxTokens: 10 }

test('admitAsync decides with Redis budgets as admit does, shared between engines', async (t) => {
  const server = await redis(t)
  const a = new Tollgate(policy(server.url, 3, 'op_timeout = "5s"'))
  const b = new Tollgate(policy(server.url, 3, 'op_timeout = "5s"'))
  const first = await a.admitAsync(call)
  assert.equal(first.kind, 'go')
  assert.ok(first.permit instanceof Permit)
  assert.deepEqual(first.permit.info().budgets, [['fleet', 'tenant=acme']])
  assert.equal((await b.admitAsync(call)).kind, 'go')
  assert.equal(a.admit(call).kind, 'go', 'the sync admit shares the same budget')
  const denied = await b.admitAsync(call)
  assert.equal(denied.kind, 'deny')
  assert.ok(denied.error instanceof DeniedError)
  assert.equal(denied.error.budget, 'fleet')
  assert.equal(denied.error.code, 'budget_exhausted')
  // Another tenant, and a request body counted here.
  const other = await a.admitAsync({ model: 'gpt-4o', tenant: 'globex', request: { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] } })
  assert.equal(other.kind, 'go')
  assert.ok(other.permit.info().promptTokens > 0)
  const v = a.settle(first.permit, { status: 200, usage: { prompt_tokens: 10, completion_tokens: 2 } })
  assert.equal(v.kind, 'done')
  a.settle(other.permit, { status: 200 })
  await assert.rejects(a.admitAsync({ ...call, promptTokens: undefined, request: '{not json' }), /not JSON/)
})

test('admitAsync leaves the event loop running while Redis is slow', async (t) => {
  const server = await redis(t)
  const tg = new Tollgate(policy(server.url, 100, 'op_timeout = "300ms"'))
  assert.equal((await tg.admitAsync(call)).permit.release(), true)
  server.pause()
  const order = []
  const pending = tg.admitAsync(call).then((d) => {
    order.push('admitted')
    return d
  })
  setImmediate(() => order.push('loop ran'))
  const d = await pending
  assert.deepEqual(order, ['loop ran', 'admitted'], 'the loop ran while the admission waited')
  assert.equal(d.kind, 'deny')
  assert.equal(d.error.code, 'store_unavailable')
  server.resume()
  let again = null
  for (let i = 0; i < 500; i++) {
    again = await tg.admitAsync(call)
    if (again.kind === 'go') break
    await new Promise((r) => setTimeout(r, 20))
  }
  assert.equal(again.kind, 'go', 'back once Redis answers')
  again.permit.release()
})

test('admitAsync on local budgets answers too', async () => {
  const tg = new Tollgate(`version = 1
[[budget]]
name = "local"
requests_per_minute = 1
`)
  const go = await tg.admitAsync(call)
  assert.equal(go.kind, 'go')
  const no = await tg.admitAsync(call)
  assert.equal(no.kind, 'deny')
  assert.equal(no.error.limit, 'requests_per_minute')
  tg.settle(go.permit, { status: 200 })
})
