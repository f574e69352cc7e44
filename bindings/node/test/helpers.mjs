// Shared test helpers: policies over a test upstream started in-process (loopback only).
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
