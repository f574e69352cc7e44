// Compiled (not run) by `npm run typecheck`: the declarations in index.d.ts fit the way the
// README and the examples use the API, and `tollgate.fetch` fits the openai package's `fetch`.
import OpenAI from 'openai'
import {
  ChatGPTAPI,
  DeniedError,
  MemoryMessageStore,
  PolicyError,
  TooLongError,
  Tollgate,
  UnknownParentError,
  countTokens,
  createFetch,
  splitText,
  type ChatGPTResponse,
  type Chunk,
  type TokenCount,
  type FailureCode,
  type Verdict,
} from '../index.js'
import { TestUpstream } from '../testkit/index.js'

export async function use(): Promise<number> {
  const up: TestUpstream = TestUpstream.start({ latencyMs: 1 })
  up.script({ model: 'gpt-4o' }, ['status_503', { kind: 'slow_first_byte', ms: 10 }])
  const tg = new Tollgate({ path: 'policy.toml' })
  const d = tg.admit({ model: 'gpt-4o', tenant: 'acme', promptTokens: 10 })
  let total = 0
  const chunks: Chunk[] = splitText('gpt-4o', 'a long text', 1000, { overlap: 100 })
  for (const c of chunks) total += c.tokens + c.end - c.start + c.overlap + (c.exact ? 0 : 1)
  const counted: TokenCount = countTokens('gpt-4o', 'hello')
  total += counted.tokens + tg.countTokens('gpt-4o', 'hi').tokens + tg.countRequest({ model: 'gpt-4o', messages: [] }).tokens
  total += tg.splitText('gpt-4o', 'text', 10, { overlap: 2 }).length + (counted.exact ? 1 : 0)
  if (d.kind === 'go') {
    const v: Verdict = tg.settle(d.permit, { status: 200, usage: { prompt_tokens: 10, completion_tokens: 2 } })
    if (v.kind === 'retry') tg.admit({ model: 'gpt-4o', attempt: v.attempt })
    total += v.settlement.tokens
    const failures: FailureCode[] = ['timeout_first_byte', 'status_503', 'cut_stream']
    for (const failure of failures) tg.settle(d.permit, { failure })
    tg.settle(d.permit, { failure: 'reset' })
    // @ts-expect-error: not a failure code
    tg.settle(d.permit, { failure: 'bogus' })
  } else if (d.kind === 'wait') {
    total += d.afterMs
  } else {
    total += d.error instanceof DeniedError ? (d.error.retryAfterMs ?? 0) : 0
  }
  const later = await tg.admitAsync({ model: 'gpt-4o', tenant: 'acme', request: { model: 'gpt-4o', messages: [] } })
  if (later.kind === 'go') later.permit.release()
  const r = await tg.send({ model: 'gpt-4o', messages: [] }, { signal: AbortSignal.timeout(1000), tenant: 'acme' })
  total += r.usage?.totalTokens ?? 0
  const s = await tg.stream({ model: 'gpt-4o', messages: [] })
  for await (const chunk of s) total += chunk.choices.length
  const raw = await tg.stream({ model: 'gpt-4o', messages: [] }, { raw: true })
  for await (const e of raw) total += e.data.length
  total += s.settlement?.tokens ?? 0
  try {
    tg.reload('version = 1')
  } catch (e) {
    if (e instanceof PolicyError) total += e.problems.length
  }
  const w = tg.watch('policy.toml', { onReload: (report) => console.log(report.generation) })
  await w.close()
  const client = new OpenAI({ apiKey: 'x', fetch: tg.fetch })
  const other = new OpenAI({ apiKey: 'x', fetch: createFetch(tg, { tenant: 'acme' }) })
  await client.chat.completions.create({ model: 'gpt-4o', messages: [] })
  void other
  // ChatGPTAPI, as the chatgpt package's README uses it.
  const api = new ChatGPTAPI({ tollgate: tg, completionParams: { model: 'gpt-4o' }, messageStore: tg.redisMessageStore() ?? new MemoryMessageStore() })
  const res: ChatGPTResponse = await api.sendMessage('Hello World!')
  const res2 = await api.sendMessage('Can you expand on that?', {
    parentMessageId: res.id,
    onProgress: (partial) => console.log(partial.text, partial.delta),
    abortSignal: AbortSignal.timeout(1000),
  })
  total += res2.promptTokens + res2.historyKept + (res2.usage?.promptTokens ?? 0) + (res2.storeError ? 1 : 0)
  try {
    await api.sendMessage('x'.repeat(10), { parentMessageId: 'gone', timeoutMs: 500 })
  } catch (e) {
    if (e instanceof TooLongError) total += e.needed - e.budget
    if (e instanceof UnknownParentError) total += e.parentMessageId.length
  }
  const trimmed = tg.trimConversation({ model: 'gpt-4o', history: [{ role: 'user', text: 'hi' }], user: 'x', window: 100, reserved: 10 })
  total += trimmed.promptTokens + trimmed.kept + (tg.contextWindow('gpt-4o') ?? 0)
  // @ts-expect-error: credentials live in the policy
  void new ChatGPTAPI({ tollgate: tg, model: 'gpt-4o', apiKey: 'sk-x' })
  total += tg.stats().budgets.length + tg.metrics().length
  await up.close()
  return total
}
