// The drop-in path for the official openai package: `new OpenAI({ fetch: tollgate.fetch })`.
import assert from 'node:assert/strict'
import { test } from 'node:test'

import OpenAI from 'openai'

import { createFetch } from '../index.js'
import { engine, upstream } from './helpers.mjs'

const messages = [{ role: 'user', content: 'hello' }]

test('chat.completions.create goes through tollgate (JSON and streaming)', async (t) => {
  const up = upstream(t)
  const tg = engine(up, '[[budget]]\nname = "per-tenant"\nscope = ["tenant"]\nrequests_per_minute = 100\n')
  const client = new OpenAI({ apiKey: 'unused', baseURL: up.baseUrl, fetch: tg.fetch, maxRetries: 0 })

  const completion = await client.chat.completions.create(
    { model: 'gpt-4o', messages, max_tokens: 6 },
    { headers: { 'x-tollgate-tenant': 'acme' } },
  )
  assert.equal(completion.choices[0].message.content, 'lorem ipsum dolor sit amet consectetur')
  assert.equal(completion.usage.completion_tokens, 6)

  const stream = await client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 6, stream: true })
  let text = ''
  let usage = null
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? ''
    usage = chunk.usage ?? usage
  }
  assert.equal(text, 'lorem ipsum dolor sit amet consectetur')
  assert.equal(usage.completion_tokens, 6, 'tollgate asked for the usage chunk')

  // Both calls were counted by the budget, the first for tenant acme.
  const stats = tg.stats().budgets[0]
  assert.equal(stats.admitted, 2)
  assert.equal(stats.keys, 2)
  assert.equal(up.log()[0].path, '/v1/chat/completions')

  // Other endpoints fall through to the global fetch.
  const models = await client.models.list()
  assert.ok(models.data.some((m) => m.id === 'gpt-4o'))
})

test('a denial surfaces as openai.RateLimitError naming the budget', async (t) => {
  const up = upstream(t)
  const tg = engine(up, '[[budget]]\nname = "per-tenant"\nscope = ["tenant"]\nrequests_per_minute = 1\n')
  const client = new OpenAI({ apiKey: 'unused', baseURL: up.baseUrl, fetch: createFetch(tg, { tenant: 'acme' }) })
  await client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 2 })
  const started = performance.now()
  await assert.rejects(client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 2 }), (e) => {
    assert.ok(e instanceof OpenAI.RateLimitError, e.constructor.name)
    assert.equal(e.status, 429)
    assert.equal(e.code, 'budget_exhausted')
    assert.equal(e.error.budget, 'per-tenant')
    assert.ok(Number(e.headers.get('retry-after-ms')) > 1000)
    return true
  })
  assert.ok(performance.now() - started < 1000, 'the openai client did not retry the denial')
  assert.equal(up.requests, 1)
})

test('upstream errors after tollgate retries map to the openai error classes', async (t) => {
  const up = upstream(t)
  up.script({}, [{ kind: 'status', status: 400 }])
  const tg = engine(up)
  const client = new OpenAI({ apiKey: 'unused', baseURL: up.baseUrl, fetch: tg.fetch })
  await assert.rejects(client.chat.completions.create({ model: 'gpt-4o', messages }), OpenAI.BadRequestError)
  assert.equal(up.requests, 1)
})

test('aborting an openai request cancels the tollgate call', async (t) => {
  const up = upstream(t)
  up.script({}, [{ kind: 'slow_first_byte', ms: 10_000 }])
  const tg = engine(up, '[[budget]]\nname = "one"\nconcurrency = 1\n')
  const client = new OpenAI({ apiKey: 'unused', baseURL: up.baseUrl, fetch: tg.fetch, maxRetries: 0 })
  const controller = new AbortController()
  setTimeout(() => controller.abort(), 100)
  await assert.rejects(
    client.chat.completions.create({ model: 'gpt-4o', messages }, { signal: controller.signal }),
    OpenAI.APIUserAbortError,
  )
  const d = tg.admit({ model: 'gpt-4o', promptTokens: 1 })
  assert.equal(d.kind, 'go', 'the aborted call freed its slot')
  d.permit.release()
})
