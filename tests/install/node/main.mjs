// Install test of the Node.js package: `npm install OUT/tollgate-<version>.tgz` into an empty
// project, then this script requires it by name, admits + settles, and sends through the test
// upstream whose base URL is the first argument. Exits 1 on any failure.
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Tollgate, DeniedError, version } = require('tollgate')

const base = process.argv[2]
assert.ok(base, 'usage: node main.mjs BASE_URL')
const tg = new Tollgate(`version = 1
[[upstream]]
name = "test"
base_url = "${base}"
[[route]]
model = "gpt-4o-mini"
targets = [{ upstream = "test", model = "gpt-4o-mini" }]
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 2
`)

const d = tg.admit({ model: 'gpt-4o-mini', tenant: 'acme', promptTokens: 12 })
assert.equal(d.kind, 'go')
assert.equal(tg.settle(d.permit, { status: 200 }).kind, 'done')

const r = await tg.send(
  { model: 'gpt-4o-mini', max_tokens: 5, messages: [{ role: 'user', content: 'hello from Node' }] },
  { tenant: 'acme', signal: AbortSignal.timeout(30_000) },
)
assert.equal(r.status, 200)
assert.equal(r.usage.completionTokens, 5)
assert.ok(r.content.length > 0)

await assert.rejects(
  tg.send({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'one too many' }] }, { tenant: 'acme' }),
  (e) => e instanceof DeniedError && e.budget === 'per-tenant',
)
tg.close?.()
console.log(`node install test (${typeof version === 'function' ? version() : version}): ok`)
