// The decide path's `io` layout: index.js takes its slot numbers from the addon
// (native.ioLayout(), built from the constants of src/decide.rs) and refuses to load when the
// layout lacks a name it uses or puts two names in one slot, rather than mixing up numbers.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { Tollgate } from '../index.js'

const here = dirname(dirname(fileURLToPath(import.meta.url)))
const require = createRequire(import.meta.url)
const native = require('../native.js')
// The addon file itself (the fake native.js below stands in for native.js, which would load it).
const addon =
  process.env.TOLLGATE_NATIVE_PATH ?? join(here, `tollgate.${require('../platform.js').platformTriple()}.node`)

test('the addon exports its io layout: distinct slots inside io, distinct flag bits', () => {
  const layout = native.ioLayout()
  assert.equal(layout.len, native.io().length)
  const slots = Object.entries(layout.slots)
  assert.ok(slots.length >= 25, `${slots.length} slots`)
  const seen = new Map()
  for (const [name, i] of slots) {
    assert.ok(Number.isInteger(i) && i >= 0 && i < layout.len, `${name} = ${i}`)
    assert.ok(!seen.has(i), `${name} and ${seen.get(i)} share slot ${i}`)
    seen.set(i, name)
  }
  let bits = 0
  for (const [name, bit] of Object.entries(layout.flags)) {
    assert.ok(Number.isInteger(bit) && bit > 0 && (bit & (bit - 1)) === 0, `${name} = ${bit}`)
    assert.equal(bits & bit, 0, `${name} reuses a bit`)
    bits |= bit
  }
  assert.deepEqual(Object.keys(layout.flags).sort(), ['FLAG_CONTENT_DELIVERED', 'FLAG_SENT'])
  assert.ok(Number.isInteger(layout.named) && layout.named < -1, `named = ${layout.named}`)
})

/**
 * Loads index.js in a child process over the real addon whose ioLayout() is passed through
 * `edit` (the source of a function of the layout); returns the child's exit status and stderr.
 */
function loadWithLayout(t, edit) {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-layout-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const fake = join(dir, 'native.js')
  writeFileSync(
    fake,
    `const real = require(${JSON.stringify(addon)})
const edit = ${edit}
module.exports = { ...real, ioLayout: () => edit(real.ioLayout()) }
`,
  )
  const child = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(join(here, 'index.js'))})`], {
    env: { ...process.env, TOLLGATE_NATIVE_PATH: fake },
    encoding: 'utf8',
  })
  return { status: child.status, stderr: child.stderr }
}

test('index.js loads over the real layout, and refuses one that disagrees with it', (t) => {
  assert.equal(loadWithLayout(t, '(l) => l').status, 0)
  const refused = [
    ['(l) => { delete l.slots.STATUS; return l }', /no slot STATUS/],
    ['(l) => { l.slots.OUT_SPEND = l.slots.OUT_TOKENS; return l }', /OUT_SPEND and OUT_TOKENS in the same slot|OUT_TOKENS and OUT_SPEND in the same slot/],
    ['(l) => { l.slots.LATENCY_MS = l.len; return l }', /no slot LATENCY_MS inside io/],
    ['(l) => { delete l.flags.FLAG_SENT; return l }', /no flag FLAG_SENT/],
    ['(l) => { l.named = -1; return l }', /NAMED/],
  ]
  for (const [edit, message] of refused) {
    const { status, stderr } = loadWithLayout(t, edit)
    assert.notEqual(status, 0, edit)
    assert.match(stderr, message, edit)
    assert.match(stderr, /rebuild the addon/, edit)
  }
})

test('every slot round-trips through admit and settle', () => {
  // Distinct numbers everywhere, so two slots swapped would show.
  const tg = new Tollgate(`version = 1
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 100
tokens_per_minute = 100000
`)
  const call = { model: 'gpt-4o', tenant: 'acme', promptTokens: 101, maxTokens: 37, priority: 3, deadlineMs: 60_000 }
  const a = tg.admit(call)
  assert.equal(a.kind, 'go')
  const info = a.permit.info()
  assert.deepEqual(info.budgets, [['per-tenant', 'tenant=acme']])
  assert.equal(info.promptTokens, 101)
  assert.equal(info.completionAllowance, 37)
  assert.equal(info.reservedTokens, 138)
  const done = tg.settle(a.permit, {
    status: 200,
    latencyMs: 12,
    usage: {
      prompt_tokens: 90,
      completion_tokens: 20,
      total_tokens: 110,
      prompt_tokens_details: { cached_tokens: 40 },
      completion_tokens_details: { reasoning_tokens: 5 },
    },
  })
  assert.equal(done.kind, 'done')
  assert.equal(done.settlement.reservedTokens, 138)
  assert.equal(done.settlement.tokens, 110)
  const cost = done.settlement.cost
  assert.ok(cost.input > 0 && cost.cachedInput > 0 && cost.output > 0, JSON.stringify(cost))
  assert.ok(cost.input !== cost.cachedInput && cost.cachedInput !== cost.output)
  assert.equal(cost.total, cost.input + cost.cachedInput + cost.output)
  assert.equal(done.settlement.spend, cost.total)
  // FLAGS: a call never sent is charged nothing; one whose content reached the caller is not
  // retried.
  const b = tg.admit(call)
  const unsent = tg.settle(b.permit, { sent: false })
  assert.equal(unsent.kind, 'done')
  assert.equal(unsent.settlement.tokens, 0)
  const c = tg.admit(call)
  assert.equal(tg.settle(c.permit, { status: 503 }).kind, 'retry')
  const d = tg.admit(call)
  assert.equal(tg.settle(d.permit, { status: 503, contentDelivered: true }).kind, 'give_up')
  assert.equal(tg.stats().budgets[0].admitted, 4)
})
