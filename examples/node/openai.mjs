// The openai package, with budgets, caching and retries from tollgate: a one-line change.
//
//   bash bindings/node/run.sh            # once: installs and builds the binding
//   node examples/node/openai.mjs
//
// This example runs against tollgate's test upstream on loopback, so it needs no API key; for
// the real service put `base_url = "https://api.openai.com/v1"` and
// `auth = { kind = "bearer", keys = ["env:OPENAI_API_KEY"] }` under [[upstream]].
import OpenAI from '../../bindings/node/node_modules/openai/index.mjs'
import { DeniedError, Tollgate } from '../../bindings/node/index.js'
import { TestUpstream } from '../../bindings/node/testkit/index.js'

const upstream = TestUpstream.start({ latencyMs: 20 })
const tollgate = new Tollgate(`
version = 1

[[upstream]]
name = "openai"
base_url = "${upstream.baseUrl}"

[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 3
tokens_per_minute = 10000

[retry]
max_attempts = 3
backoff = { base = "50ms", max = "500ms" }
`)

// The one-line change: hand tollgate's fetch to the client.
const client = new OpenAI({ apiKey: 'unused-tollgate-holds-the-keys', baseURL: upstream.baseUrl, fetch: tollgate.fetch })

// A 503 from the upstream is retried by tollgate, invisibly to the caller.
upstream.script({}, ['status_503'])
const completion = await client.chat.completions.create(
  { model: 'gpt-4o', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 5 },
  { headers: { 'x-tollgate-tenant': 'acme' } },
)
console.log('answer:', completion.choices[0].message.content, '| usage:', completion.usage.total_tokens, 'tokens')

const stream = await client.chat.completions.create(
  { model: 'gpt-4o', messages: [{ role: 'user', content: 'Count' }], max_tokens: 6, stream: true },
  { headers: { 'x-tollgate-tenant': 'acme' } },
)
let text = ''
for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? ''
console.log('streamed:', text)

// The budget holds: 3 attempts a minute for acme (the retried 503 was one), so the next
// requests are refused before they leave the host.
for (let i = 0; i < 2; i++) {
  try {
    await client.chat.completions.create(
      { model: 'gpt-4o', messages: [{ role: 'user', content: 'again' }], max_tokens: 5 },
      { headers: { 'x-tollgate-tenant': 'acme' } },
    )
    console.log('request', i + 3, 'went through')
  } catch (e) {
    if (!(e instanceof OpenAI.RateLimitError)) throw e
    console.log(`request ${i + 3} refused: ${e.status} ${e.code} by budget '${e.error.budget}'`)
  }
}

// The same engine without the openai package: the call API and the decide API.
try {
  await tollgate.send({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }, { tenant: 'acme' })
} catch (e) {
  if (!(e instanceof DeniedError)) throw e
  console.log(`tollgate.send refused too: ${e.code}, retry in ${Math.round(e.retryAfterMs / 1000)} s`)
}
console.log('upstream saw', upstream.requests, 'requests; budget:', tollgate.stats().budgets[0])
await upstream.close()
