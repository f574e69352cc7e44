// The call API against the test upstream: send, stream, abort, deadlines, denials, and a
// reload while 1,000 calls are in flight.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { test } from 'node:test'

import {
  AbortError,
  DeadlineError,
  DeniedError,
  GaveUpError,
  InvalidRequestError,
  StreamCutError,
  Tollgate,
} from '../index.js'
import { chat, engine, oneTargetPolicy, openCircuit, policy, upstream } from './helpers.mjs'

test('send returns the JSON answer with usage and the charge', async (t) => {
  const up = upstream(t)
  const tg = engine(up)
  const r = await tg.send(chat(), { tenant: 'acme' })
  assert.equal(r.status, 200)
  assert.equal(r.source, 'upstream')
  assert.equal(r.attempts, 1)
  assert.equal(r.content.split(' ').length, 8)
  assert.equal(r.body.object, 'chat.completion')
  assert.equal(r.usage.completionTokens, 8)
  assert.equal(r.settlement.tokens, r.usage.totalTokens)
  assert.equal(up.requests, 1)
  const arrival = up.log()[0]
  assert.equal(arrival.path, '/v1/chat/completions')
  assert.equal(JSON.parse(arrival.body).stream, undefined)
})

test('send retries a 503 and reports the history', async (t) => {
  const up = upstream(t)
  up.script({}, ['status_503'])
  const tg = engine(up, '[retry]\nbackoff = { base = "10ms", max = "20ms" }\n')
  const r = await tg.send(chat())
  assert.equal(r.attempts, 2)
  assert.equal(r.history[0].outcome, 'status_503')
  assert.equal(up.countStatus(503), 1)
})

test('a call given up carries the upstream status and body', async (t) => {
  const up = upstream(t)
  up.script({}, [{ kind: 'status', status: 400 }])
  const tg = engine(up)
  await assert.rejects(tg.send(chat()), (e) => {
    assert.ok(e instanceof GaveUpError)
    assert.equal(e.code, 'not_retryable')
    assert.equal(e.httpStatus, 400)
    assert.match(e.body, /"error"/)
    return true
  })
})

test('a budget denial rejects with DeniedError naming the budget', async (t) => {
  const up = upstream(t)
  const tg = engine(up, '[[budget]]\nname = "per-tenant"\nscope = ["tenant"]\nrequests_per_minute = 1\n')
  await tg.send(chat(), { tenant: 'acme' })
  await assert.rejects(tg.send(chat(), { tenant: 'acme' }), (e) => {
    assert.ok(e instanceof DeniedError)
    assert.equal(e.code, 'budget_exhausted')
    assert.equal(e.budget, 'per-tenant')
    assert.ok(e.retryAfterMs > 1000)
    return true
  })
  assert.equal(up.requests, 1, 'the denied call never reached the upstream')
  await assert.rejects(tg.send({ messages: [] }), InvalidRequestError)
})

test('stream yields the chunks in order, then usage and settlement', async (t) => {
  const up = upstream(t, { dripMs: 2 })
  const tg = engine(up)
  const stream = await tg.stream(chat('tell me', { max_tokens: 12 }), { tenant: 'acme' })
  assert.equal(stream.status, 200)
  let text = ''
  let chunks = 0
  for await (const chunk of stream) {
    chunks++
    assert.equal(chunk.object, 'chat.completion.chunk')
    text += chunk.choices[0]?.delta?.content ?? ''
  }
  // The role chunk, four of three words, the finish reason, the usage chunk.
  assert.equal(chunks, 7)
  assert.equal(text, 'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor')
  assert.equal(stream.usage.completionTokens, 12)
  assert.equal(stream.settlement.tokens, stream.usage.totalTokens)
  const sent = JSON.parse(up.log()[0].body)
  assert.equal(sent.stream, true)
  assert.deepEqual(sent.stream_options, { include_usage: true })
})

test('a stream cut after content rejects with StreamCutError', async (t) => {
  const up = upstream(t)
  up.script({ stream: true }, [{ kind: 'cut_stream_after', n: 3 }])
  const tg = engine(up)
  const stream = await tg.stream(chat())
  let seen = 0
  await assert.rejects(
    (async () => {
      for await (const _ of stream) seen++
    })(),
    (e) => {
      assert.ok(e instanceof StreamCutError)
      assert.equal(e.code, 'stream_cut')
      return true
    },
  )
  assert.ok(seen >= 1)
  assert.ok(stream.settlement !== null)
  assert.equal(up.requests, 1, 'content was delivered: no retry')
})

test('break out of a stream cancels it and frees the slot', async (t) => {
  const up = upstream(t, { dripMs: 20 })
  const tg = engine(up, '[[budget]]\nname = "one"\nconcurrency = 1\n')
  const stream = await tg.stream(chat('go on', { max_tokens: 100 }))
  for await (const _ of stream) break
  const next = tg.admit({ model: 'gpt-4o', promptTokens: 1 })
  assert.equal(next.kind, 'go', 'the slot was freed by break')
  next.permit.release()
})

test('an AbortSignal aborts a slow call at once and frees its concurrency slot', async (t) => {
  const up = upstream(t)
  up.script({}, [{ kind: 'slow_first_byte', ms: 10_000 }])
  const tg = engine(up, '[[budget]]\nname = "one"\nconcurrency = 1\n')
  const controller = new AbortController()
  const started = performance.now()
  const slow = tg.send(chat(), { signal: controller.signal })
  setTimeout(() => controller.abort(new Error('user gave up')), 100)
  await assert.rejects(slow, (e) => {
    assert.ok(e instanceof AbortError)
    assert.equal(e.name, 'AbortError')
    assert.equal(e.cause.message, 'user gave up')
    return true
  })
  const took = performance.now() - started
  assert.ok(took < 2000, `aborted after ${took} ms`)
  // The slot is free again: the next call is admitted and answered.
  const r = await tg.send(chat())
  assert.equal(r.status, 200)
  assert.equal(tg.inFlight, 0)
  // An already-aborted signal rejects at once, without a request.
  const before = up.requests
  await assert.rejects(tg.send(chat(), { signal: AbortSignal.abort() }), AbortError)
  await assert.rejects(tg.stream(chat(), { signal: AbortSignal.abort() }), AbortError)
  assert.equal(up.requests, before)
})

test('an AbortSignal aborts a stream mid-way', async (t) => {
  const up = upstream(t, { dripMs: 30 })
  const tg = engine(up, '[[budget]]\nname = "one"\nconcurrency = 1\n')
  const controller = new AbortController()
  const stream = await tg.stream(chat('long', { max_tokens: 200 }), { signal: controller.signal })
  let n = 0
  await assert.rejects(
    (async () => {
      for await (const _ of stream) {
        if (++n === 2) controller.abort()
      }
    })(),
    AbortError,
  )
  assert.equal(tg.admit({ model: 'gpt-4o', promptTokens: 1 }).kind, 'go')
})

test('a deadline rejects with DeadlineError', async (t) => {
  const up = upstream(t)
  up.script({}, [{ kind: 'slow_first_byte', ms: 5_000 }])
  const tg = engine(up)
  await assert.rejects(tg.send(chat(), { deadline: 100 }), DeadlineError)
})

test('reload while 1,000 calls are in flight: none dropped, the new limit applies after', async (t) => {
  const up = upstream(t, { latencyMs: 300 })
  const budget = (rpm) => `[[budget]]\nname = "rpm"\nrequests_per_minute = ${rpm}\n`
  const tg = engine(up, budget(100_000))
  const calls = []
  for (let i = 0; i < 1000; i++) calls.push(tg.send(chat(`call ${i}`, { max_tokens: 2 })))
  // Reload once every call has been admitted and reached the upstream (each is held there
  // 300 ms), not after a fixed pause: a busy machine admits a thousand calls more slowly.
  for (let i = 0; i < 2000 && up.requests < 1000; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  assert.equal(up.requests, 1000, 'every call reached the upstream before the reload')
  assert.equal(tg.reload(policy(up, budget(2))), 2)
  const results = await Promise.allSettled(calls)
  const failed = results.filter((r) => r.status === 'rejected')
  assert.equal(failed.length, 0, failed[0]?.reason?.message)
  assert.equal(up.requests, 1000)
  // The new limit: 2 a minute, with the thousand already counted against it.
  const after = await Promise.allSettled([tg.send(chat()), tg.send(chat()), tg.send(chat())])
  const denied = after.filter((r) => r.status === 'rejected')
  assert.ok(denied.length >= 1)
  for (const d of denied) {
    assert.ok(d.reason instanceof DeniedError)
    assert.equal(d.reason.budget, 'rpm')
  }
})

test('send waits for the only target while its circuit is open, then goes', async (t) => {
  const up = upstream(t)
  const tg = new Tollgate(oneTargetPolicy({ baseUrl: up.baseUrl, openFor: '150ms', maxRetryAfter: '60s' }))
  openCircuit(tg)
  assert.equal(tg.admit({ model: 'gpt-4o', promptTokens: 10 }).kind, 'wait')
  const r = await tg.send(chat())
  assert.equal(r.status, 200)
  assert.equal(r.attempts, 1)
  assert.equal(r.target.upstream, 'only')
  assert.ok(r.queuedMs > 0, `it waited for the circuit (queuedMs ${r.queuedMs})`)
  assert.equal(up.requests, 1, 'only the probe reached the upstream')
  // The probe succeeded: the circuit is closed again.
  const d = tg.admit({ model: 'gpt-4o', promptTokens: 10 })
  assert.equal(d.kind, 'go')
  d.permit.release()
})

test('send does not wait for an open circuit past max_retry_after or its deadline', async (t) => {
  const up = upstream(t)
  const unavailable = (e) => {
    assert.ok(e instanceof DeniedError, e.stack)
    assert.equal(e.code, 'unavailable')
    return true
  }
  const short = new Tollgate(oneTargetPolicy({ baseUrl: up.baseUrl, openFor: '30s', maxRetryAfter: '10s' }))
  openCircuit(short)
  await assert.rejects(short.send(chat()), unavailable)
  const long = new Tollgate(oneTargetPolicy({ baseUrl: up.baseUrl, openFor: '30s', maxRetryAfter: '60s' }))
  openCircuit(long)
  await assert.rejects(long.send(chat(), { deadline: 1000 }), unavailable)
  assert.equal(up.requests, 0)
})

// The answers of send come through one function per engine that keeps the event loop alive only
// while calls are in flight: a script whose only pending work is a slow call waits for it (rather
// than exiting with an unsettled top-level await), and exits once the engine is idle.
test('a call in flight keeps the process alive, an idle engine does not', () => {
  const script = `
    import { Tollgate } from ${JSON.stringify(new URL('../index.js', import.meta.url).href)}
    import { TestUpstream } from ${JSON.stringify(new URL('../testkit/index.js', import.meta.url).href)}
    const up = TestUpstream.start({ latencyMs: 300 })
    const tg = new Tollgate('version = 1\\n[[upstream]]\\nname = "t"\\nbase_url = "' + up.baseUrl + '"\\n')
    const answers = await Promise.all([1, 2, 3].map(() => tg.send({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], max_tokens: 8 })))
    console.log(answers.map((r) => r.status).join(','))
    up.close()
  `
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 60_000,
  })
  assert.equal(child.status, 0, child.stderr)
  assert.equal(child.stdout.trim(), '200,200,200')
})

test('a raw stream yields the events as framed: data, ids where the upstream numbers them, [DONE] last', async (t) => {
  for (const eventIds of [false, true]) {
    const up = upstream(t, { eventIds })
    const tg = engine(up)
    const s = await tg.stream(chat(), { raw: true })
    const events = []
    for await (const e of s) events.push(e)
    assert.equal(events.at(-1).data, '[DONE]')
    const chunks = events.slice(0, -1)
    assert.ok(chunks.length >= 3, `${chunks.length} events`)
    for (const [i, e] of chunks.entries()) {
      assert.equal(typeof JSON.parse(e.data).object, 'string')
      assert.equal(e.event, undefined)
      if (eventIds) assert.equal(typeof e.id, 'string', `event ${i} has an id`)
      else assert.equal(e.id, undefined)
    }
    if (eventIds) assert.equal(new Set(chunks.map((e) => e.id)).size, chunks.length)
    assert.equal(s.usage.completionTokens, 8)
  }
})

// The answer function lives as long as its native engine and must not hold the engine itself:
// engines that made calls and are no longer referenced are collected (none were while it did).
test('engines that made calls are garbage-collected once unreferenced', () => {
  const script = `
    import { Tollgate } from ${JSON.stringify(new URL('../index.js', import.meta.url).href)}
    import { TestUpstream } from ${JSON.stringify(new URL('../testkit/index.js', import.meta.url).href)}
    const up = TestUpstream.start()
    const finalized = { engine: 0, native: 0 }
    const registry = new FinalizationRegistry((what) => { finalized[what]++ })
    async function one() {
      const tg = new Tollgate('version = 1\\n[[upstream]]\\nname = "t"\\nbase_url = "' + up.baseUrl + '"\\n')
      registry.register(tg, 'engine')
      registry.register(tg._native, 'native')
      await tg.send({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], max_tokens: 8 })
    }
    for (let i = 0; i < 20; i++) await one()
    for (let i = 0; i < 20 && finalized.native < 20; i++) {
      globalThis.gc()
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    console.log(JSON.stringify(finalized))
    up.close()
  `
  const child = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 60_000,
  })
  assert.equal(child.status, 0, child.stderr)
  const finalized = JSON.parse(child.stdout)
  assert.ok(finalized.engine > 0 && finalized.native > 0, child.stdout)
})
