'use strict'
// The fault-injecting OpenAI-compatible test upstream of tollgate (crate tollgate-testkit), on
// 127.0.0.1 in this process: for the binding's tests, benchmark and examples. A separate addon
// (testkit.node, built by scripts/build.mjs), so the published package carries no test code.
const { join } = require('node:path')

const native = require(process.env.TOLLGATE_TESTKIT_NATIVE_PATH || join(__dirname, 'testkit.node'))

function flatHeaders(headers) {
  if (headers === undefined || headers === null) return undefined
  const out = []
  const entries =
    typeof headers.entries === 'function' && !Array.isArray(headers)
      ? headers.entries()
      : Array.isArray(headers)
        ? headers
        : Object.entries(headers)
  for (const [name, value] of entries) {
    if (value === undefined || value === null) continue
    out.push(String(name), Array.isArray(value) ? value.join(', ') : String(value))
  }
  return out
}

const ACTIONS = new Set([
  'normal',
  'latency',
  'slow_first_byte',
  'slow_drip',
  'status_429',
  'status_500',
  'status_503',
  'status',
  'reset_mid_body',
  'cut_stream_after',
  'malformed_json',
  'respond',
])

function action(a) {
  if (typeof a === 'string') a = { kind: a }
  if (!a || !ACTIONS.has(a.kind)) throw new TypeError(`unknown test upstream action ${JSON.stringify(a)}`)
  return {
    kind: a.kind,
    ms: a.ms,
    n: a.n,
    retryAfter: a.retryAfter,
    status: a.status,
    shouldRetry: a.shouldRetry,
    body: a.body,
    headers: flatHeaders(a.headers),
  }
}

/**
 * The fault-injecting OpenAI-compatible upstream from tollgate's testkit, on 127.0.0.1 in this
 * process (for tests, benchmarks and examples).
 */
class TestUpstream {
  constructor(inner) {
    this._inner = inner
  }

  /** Starts one: { latencyMs, latencyMaxMs, dripMs, words, maxWords, seed, eventIds, workerThreads }. */
  static start(options = {}) {
    return new TestUpstream(native.TestUpstream.start(options))
  }

  /** The OpenAI base URL, `http://127.0.0.1:PORT/v1`. */
  get baseUrl() {
    return this._inner.baseUrl
  }

  /** Requests received so far. */
  get requests() {
    return this._inner.requests
  }

  /**
   * Queues actions for the requests `match` ({ model, tenant, path, stream, header }) selects:
   * 'normal', 'status_503', { kind: 'slow_first_byte', ms }, { kind: 'cut_stream_after', n },
   * { kind: 'status_429', retryAfter }, { kind: 'status', status, shouldRetry }, ...
   */
  script(match, actions) {
    this._inner.script(match ?? {}, actions.map(action))
  }

  /** Scripted actions not used yet. */
  scriptRemaining() {
    return this._inner.scriptRemaining()
  }

  /** Requests answered with `status`. */
  countStatus(status) {
    return this._inner.countStatus(status)
  }

  /** Every request received, in order. */
  log() {
    return this._inner.log()
  }

  /** Empties the log. */
  clearLog() {
    this._inner.clearLog()
  }

  /** Stops the upstream. */
  close() {
    return this._inner.close()
  }
}

module.exports = { TestUpstream }
