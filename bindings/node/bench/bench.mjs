// Benchmarks of the Node binding (under a minute):
//  1. admit + settle pairs from JavaScript: ns per pair against the 1 µs target;
//  2. send throughput at a fixed concurrency against the test upstream, compared with Node's
//     own fetch (undici) on the same upstream in the same run, in alternating rounds; target:
//     tollgate ≥ fetch.
// Usage: node bench/bench.mjs [--quick]
import { Tollgate } from '../index.js'
import { TestUpstream } from '../testkit/index.js'

const quick = process.argv.includes('--quick')
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

// 1. admit + settle ---------------------------------------------------------------------------
{
  // One budget per tenant with requests, tokens and concurrency; usage reported at settle.
  const tg = new Tollgate(`version = 1
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_second = 1e9
burst = 1e9
tokens_per_minute = 1e15
concurrency = 1000
`)
  const call = { model: 'gpt-4o', tenant: 'acme', promptTokens: 120, maxTokens: 200 }
  const outcome = { status: 200, usage: { prompt_tokens: 120, completion_tokens: 40 } }
  const rounds = quick ? 5 : 15
  const n = 200_000
  const perPair = []
  for (let r = 0; r < rounds + 2; r++) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < n; i++) {
      const d = tg.admit(call)
      tg.settle(d.permit, outcome)
    }
    const ns = Number(process.hrtime.bigint() - t0) / n
    if (r >= 2) perPair.push(ns) // two warm-up rounds
  }
  const ns = median(perPair)
  console.log(`admit + settle from JS: ${ns.toFixed(0)} ns per pair (median of ${rounds} rounds of ${n}); ` +
    `target <= 1000 ns: ${ns <= 1000 ? 'met' : 'MISSED'}`)
}

// 2. send throughput vs fetch ---------------------------------------------------------------
{
  const concurrency = 64
  const roundMs = quick ? 1000 : 2500
  const rounds = quick ? 2 : 4
  const up = TestUpstream.start()
  const tg = new Tollgate(`version = 1
[[upstream]]
name = "test"
base_url = "${up.baseUrl}"
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_second = 1e9
burst = 1e9
`)
  const url = `${up.baseUrl}/chat/completions`
  let seq = 0
  const body = () => ({
    model: 'gpt-4o',
    messages: [{ role: 'user', content: `request ${seq++}` }],
    max_tokens: 16,
  })
  const viaTollgate = async () => {
    const r = await tg.send(body(), { tenant: 'bench', cache: 'bypass' })
    if (r.status !== 200 || !r.body.choices) throw new Error('bad answer')
  }
  const viaFetch = async () => {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body()),
    })
    const json = await res.json()
    if (res.status !== 200 || !json.choices) throw new Error('bad answer')
  }
  const run = async (one) => {
    const until = performance.now() + roundMs
    let done = 0
    const worker = async () => {
      while (performance.now() < until) {
        await one()
        done++
      }
    }
    const t0 = performance.now()
    await Promise.all(Array.from({ length: concurrency }, worker))
    return done / ((performance.now() - t0) / 1000)
  }
  await run(viaTollgate) // warm-up: connections, JIT
  await run(viaFetch)
  const rates = { tollgate: [], fetch: [] }
  for (let r = 0; r < rounds; r++) {
    rates.tollgate.push(await run(viaTollgate))
    rates.fetch.push(await run(viaFetch))
  }
  await up.close()
  const t = median(rates.tollgate)
  const f = median(rates.fetch)
  console.log(`send at concurrency ${concurrency}, test upstream on loopback (median of ${rounds} alternating rounds of ${roundMs} ms):`)
  console.log(`  tollgate.send: ${t.toFixed(0)} req/s   [${rates.tollgate.map((x) => x.toFixed(0)).join(', ')}]`)
  console.log(`  fetch (undici): ${f.toFixed(0)} req/s   [${rates.fetch.map((x) => x.toFixed(0)).join(', ')}]`)
  console.log(`  ratio tollgate / fetch: ${(t / f).toFixed(2)}; target >= 1: ${t >= f ? 'met' : 'MISSED'}`)
}
