// Shared test helpers: policies over a test upstream started in-process (loopback only), and a
// throwaway redis-server.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createConnection, createServer } from 'node:net'

import { Tollgate } from '../index.js'
import { TestUpstream } from '../testkit/index.js'

/** A policy with one upstream at `up` and `rest` appended. */
export function policy(up, rest = '') {
  return `version = 1
[[upstream]]
name = "test"
base_url = "${up.baseUrl}"
${rest}`
}

/** An engine over `up` with `rest` appended to its policy. */
export function engine(up, rest = '') {
  return new Tollgate(policy(up, rest))
}

/** A small chat request. */
export function chat(content = 'hello there', extra = {}) {
  return { model: 'gpt-4o', messages: [{ role: 'user', content }], max_tokens: 8, ...extra }
}

/** Starts an upstream for one test and closes it after. */
export function upstream(t, options) {
  const up = TestUpstream.start(options)
  t.after(() => up.close())
  return up
}

/**
 * A policy whose one route target's circuit opens for `openFor` after four failures, and whose
 * calls may wait up to `maxRetryAfter` for a target (the Rust tests' `one_target_open`).
 */
export function oneTargetPolicy({ baseUrl = 'http://127.0.0.1:9/v1', openFor = '30s', maxRetryAfter = '60s' } = {}) {
  return `version = 1
[[upstream]]
name = "only"
base_url = "${baseUrl}"
[[route]]
model = "gpt-4o"
targets = [{ upstream = "only", model = "gpt-4o" }]
[retry]
max_retry_after = "${maxRetryAfter}"
[breaker]
window = 4
min_calls = 4
failure_rate = 0.5
open_for = "${openFor}"
half_open_calls = 1
`
}

/** Opens the circuit of `tg`'s one target: four calls that end in a 500. */
export function openCircuit(tg) {
  for (let i = 0; i < 4; i++) {
    const d = tg.admit({ model: 'gpt-4o', promptTokens: 10, maxTokens: 10 })
    if (d.kind !== 'go') throw new Error(`call ${i + 1} did not go while the circuit was closed: ${d.kind}`)
    tg.settle(d.permit, { status: 500 })
  }
}

/** A free loopback port. */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

function accepts(port) {
  return new Promise((resolve) => {
    const c = createConnection({ host: '127.0.0.1', port })
    c.on('connect', () => {
      c.destroy()
      resolve(true)
    })
    c.on('error', () => resolve(false))
  })
}

/** Starts a throwaway redis-server for one test: { url, pause(), resume() }. */
export async function redis(t) {
  const port = await freePort()
  const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  })
  let failed = null
  server.on('error', (e) => {
    failed = e
  })
  t.after(() => {
    server.kill('SIGCONT')
    server.kill('SIGKILL')
  })
  for (let i = 0; i < 500 && !failed; i++) {
    if (await accepts(port)) break
    await new Promise((r) => setTimeout(r, 20))
  }
  if (failed) throw new Error(`redis-server could not be started (install it: apt-get install redis-server): ${failed.message}`)
  assert.ok(await accepts(port), 'redis-server accepts connections')
  return {
    url: `redis://127.0.0.1:${port}`,
    pause: () => server.kill('SIGSTOP'),
    resume: () => server.kill('SIGCONT'),
  }
}
