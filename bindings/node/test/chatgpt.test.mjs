// ChatGPTAPI (the chatgpt package's class over tollgate) against the test upstream: parent links
// and the prompt count the upstream bills, a history cut by that count, a message too long on
// its own, streams (progress, cut, abort), a conversation continued over Redis by a second
// engine, bad input, and the trimming compared with the chatgpt package's rule.
import assert from 'node:assert/strict'
import { test } from 'node:test'

import {
  AbortError,
  ChatGPTAPI,
  DeadlineError,
  GaveUpError,
  InvalidRequestError,
  MemoryMessageStore,
  MessageStoreError,
  StreamCutError,
  TooLongError,
  Tollgate,
  UnknownParentError,
} from '../index.js'
import { engine, policy, redis, upstream } from './helpers.mjs'

/** A ChatGPTAPI over `up` with a store the test can look into. */
function api(up, options = {}, rest = '') {
  const messageStore = options.messageStore ?? new MemoryMessageStore()
  const chatgpt = new ChatGPTAPI({
    tollgate: engine(up, rest),
    model: 'gpt-4o',
    systemMessage: 'You are terse.',
    maxResponseTokens: 8,
    tenant: 'acme',
    ...options,
    messageStore,
  })
  return { chatgpt, store: messageStore }
}

/** The `messages` of the upstream's `n`-th request. */
function sent(up, n) {
  return JSON.parse(up.log()[n].body).messages
}

test('a conversation of three turns: history sent, parent links, one conversation id, the billed count', async (t) => {
  const up = upstream(t)
  const { chatgpt, store } = api(up)
  const defaults = new ChatGPTAPI({ tollgate: chatgpt.tollgate, completionParams: { model: 'gpt-4o' } })
  assert.equal(defaults.model, 'gpt-4o')
  assert.equal(defaults.maxModelTokens, 128000, "the model's window from the policy's model table")
  assert.equal(defaults.maxResponseTokens, 1000)
  const r1 = await chatgpt.sendMessage('What is a token bucket?')
  const r2 = await chatgpt.sendMessage('And a leaky bucket?', { parentMessageId: r1.id })
  const r3 = await chatgpt.sendMessage('Which one is GCRA?', { parentMessageId: r2.id })
  for (const r of [r1, r2, r3]) {
    assert.equal(r.role, 'assistant')
    assert.equal(r.text.split(' ').length, 8)
    assert.equal(r.detail.object, 'chat.completion')
    assert.equal(r.promptTokens, r.usage.promptTokens, 'the count is the one the upstream billed')
    assert.equal(r.promptTokens, r.detail.usage.prompt_tokens)
    assert.equal(r.conversationId, r1.conversationId)
    assert.equal(r.storeError, null)
  }
  assert.deepEqual([r1.historyKept, r2.historyKept, r3.historyKept], [0, 2, 4])
  assert.deepEqual(sent(up, 2), [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'What is a token bucket?' },
    { role: 'assistant', content: r1.text },
    { role: 'user', content: 'And a leaky bucket?' },
    { role: 'assistant', content: r2.text },
    { role: 'user', content: 'Which one is GCRA?' },
  ])
  const body = JSON.parse(up.log()[2].body)
  assert.equal(body.max_tokens, 8)
  assert.equal(body.stream, undefined)
  // Parent links: answer -> its question -> the previous answer.
  const q3 = await chatgpt.getMessageById(r3.parentMessageId)
  assert.deepEqual(q3, {
    id: r3.parentMessageId,
    role: 'user',
    text: 'Which one is GCRA?',
    parentMessageId: r2.id,
    conversationId: r1.conversationId,
  })
  assert.equal((await chatgpt.getMessageById(r3.id)).text, r3.text)
  assert.equal(store.size, 6)
  // A chosen message id and conversation id are kept.
  const r4 = await chatgpt.sendMessage('New topic', { messageId: 'q-4', conversationId: 'conv-x' })
  assert.equal(r4.parentMessageId, 'q-4')
  assert.equal(r4.conversationId, 'conv-x')
})

test('a history that does not fit is cut oldest first, by the count admission makes', async (t) => {
  const up = upstream(t)
  const { chatgpt, store } = api(up)
  let last = null
  for (const q of ['first question here', 'second question here', 'third question here']) {
    last = await chatgpt.sendMessage(q, { parentMessageId: last?.id })
  }
  const small = new ChatGPTAPI({
    tollgate: chatgpt.tollgate,
    model: 'gpt-4o',
    systemMessage: 'You are terse.',
    maxModelTokens: 60,
    maxResponseTokens: 8,
    messageStore: store,
  })
  const r = await small.sendMessage('fourth question', { parentMessageId: last.id })
  assert.ok(r.historyDropped > 0 && r.historyKept > 0, `kept ${r.historyKept}, dropped ${r.historyDropped}`)
  assert.equal(r.historyKept + r.historyDropped, 6)
  assert.ok(r.promptTokens <= 52, `${r.promptTokens} prompt tokens in a budget of 52`)
  assert.equal(r.promptTokens, r.usage.promptTokens)
  const messages = sent(up, 3)
  assert.equal(messages.length, r.historyKept + 2)
  assert.deepEqual(messages[0], { role: 'system', content: 'You are terse.' })
  assert.deepEqual(messages.at(-1), { role: 'user', content: 'fourth question' })
  assert.equal(messages.at(-2).content, last.text, 'the newest turn is kept')
  // One more (older) message would not have fitted.
  const history = []
  for (let id = last.id; id; ) {
    const m = await store.get(id)
    history.unshift({ role: m.role, text: m.text })
    id = m.parentMessageId
  }
  const more = chatgpt.tollgate.trimConversation({
    model: 'gpt-4o',
    system: 'You are terse.',
    history: history.slice(r.historyDropped - 1),
    user: 'fourth question',
    window: 100_000,
    reserved: 8,
  })
  assert.ok(more.promptTokens > 52, `one more message: ${more.promptTokens}`)
})

test('a message that alone is too long is refused with both numbers: nothing sent, nothing stored', async (t) => {
  const up = upstream(t)
  const { chatgpt, store } = api(up, { maxModelTokens: 100, maxResponseTokens: 50 })
  await assert.rejects(chatgpt.sendMessage('word '.repeat(200)), (e) => {
    assert.ok(e instanceof TooLongError, e.stack)
    assert.equal(e.code, 'too_long')
    assert.equal(e.budget, 50)
    assert.equal(e.window, 100)
    assert.equal(e.reserved, 50)
    assert.ok(e.needed > 200, `needed ${e.needed}`)
    assert.ok(e.message.includes(String(e.needed)) && e.message.includes('50'), e.message)
    return true
  })
  assert.equal(up.requests, 0)
  assert.equal(store.size, 0)
})

test('a stream calls onProgress with the text so far and assembles the answer', async (t) => {
  const up = upstream(t, { dripMs: 2 })
  const { chatgpt, store } = api(up, { maxResponseTokens: 12 })
  const partials = []
  const r = await chatgpt.sendMessage('tell me', { onProgress: (p) => partials.push(p) })
  assert.equal(r.text, 'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor')
  assert.ok(partials.length >= 2, `${partials.length} progress calls`)
  assert.equal(partials.map((p) => p.delta).join(''), r.text)
  for (const p of partials) {
    assert.ok(r.text.startsWith(p.text))
    assert.equal(p.id, r.id)
    assert.equal(p.role, 'assistant')
  }
  assert.equal(partials.at(-1).text, r.text)
  assert.equal(r.detail.object, 'chat.completion')
  assert.equal(r.detail.choices[0].message.content, r.text)
  assert.equal(r.detail.choices[0].finish_reason, 'length')
  assert.equal(r.detail.usage.prompt_tokens, r.promptTokens)
  assert.equal(r.usage.completionTokens, 12)
  assert.equal(JSON.parse(up.log()[0].body).stream, true)
  assert.equal(store.size, 2)
  // stream: true without onProgress streams too.
  const s = await chatgpt.sendMessage('again', { stream: true, parentMessageId: r.id })
  assert.equal(JSON.parse(up.log()[1].body).stream, true)
  assert.equal(s.historyKept, 2)
})

test('a stream cut mid-answer rejects with StreamCutError and stores nothing', async (t) => {
  const up = upstream(t)
  up.script({ stream: true }, [{ kind: 'cut_stream_after', n: 3 }])
  const { chatgpt, store } = api(up, { maxResponseTokens: 40 })
  let progress = 0
  await assert.rejects(
    chatgpt.sendMessage('go on', { onProgress: () => progress++ }),
    (e) => {
      assert.ok(e instanceof StreamCutError, e.stack)
      assert.ok(e.settlement !== null)
      return true
    },
  )
  assert.ok(progress >= 1)
  assert.equal(up.requests, 1, 'content was delivered: not retried')
  assert.equal(store.size, 0)
})

test('abortSignal cancels the call (AbortError) and timeoutMs ends it (DeadlineError): nothing stored', async (t) => {
  const up = upstream(t)
  up.script({}, [{ kind: 'slow_first_byte', ms: 10_000 }, { kind: 'slow_first_byte', ms: 10_000 }])
  const { chatgpt, store } = api(up, {}, '[[budget]]\nname = "one"\nconcurrency = 1\n')
  const controller = new AbortController()
  setTimeout(() => controller.abort(new Error('user left')), 100)
  await assert.rejects(chatgpt.sendMessage('slow', { abortSignal: controller.signal }), (e) => {
    assert.ok(e instanceof AbortError, e.stack)
    assert.equal(e.cause.message, 'user left')
    return true
  })
  await assert.rejects(chatgpt.sendMessage('slow', { timeoutMs: 100 }), DeadlineError)
  await assert.rejects(chatgpt.sendMessage('x', { abortSignal: AbortSignal.abort() }), AbortError)
  assert.equal(store.size, 0)
  assert.equal(chatgpt.tollgate.inFlight, 0)
  // A stream aborted mid-way.
  const drip = upstream(t, { dripMs: 30 })
  const streaming = api(drip, { maxResponseTokens: 100 })
  const c = new AbortController()
  await assert.rejects(
    streaming.chatgpt.sendMessage('long', { abortSignal: c.signal, onProgress: () => c.abort() }),
    AbortError,
  )
  assert.equal(streaming.store.size, 0)
})

test('retries are the policy\'s: a 400 is not retried, nothing stored', async (t) => {
  const up = upstream(t)
  up.script({}, [{ kind: 'status', status: 400 }])
  const { chatgpt, store } = api(up)
  await assert.rejects(chatgpt.sendMessage('hello'), (e) => {
    assert.ok(e instanceof GaveUpError)
    assert.equal(e.code, 'not_retryable')
    assert.equal(e.httpStatus, 400)
    return true
  })
  assert.equal(up.requests, 1)
  assert.equal(store.size, 0)
})

test('a second engine continues the conversation over the policy\'s Redis', async (t) => {
  const server = await redis(t)
  const up = upstream(t)
  const rest = `[redis]\nurl = "${server.url}"\nkey_prefix = "chat"\non_failure = "fail_closed"\nop_timeout = "5s"\nconnect_timeout = "10s"\n`
  const a = new Tollgate(policy(up, rest))
  const b = new Tollgate(policy(up, rest))
  const inA = new ChatGPTAPI({ tollgate: a, model: 'gpt-4o', maxResponseTokens: 8, messageStore: a.redisMessageStore({ ttlMs: 60_000 }) })
  const inB = new ChatGPTAPI({ tollgate: b, model: 'gpt-4o', maxResponseTokens: 8, messageStore: b.redisMessageStore() })
  const first = await inA.sendMessage('remember: blue')
  assert.equal(first.storeError, null)
  const second = await inB.sendMessage('what did I say?', { parentMessageId: first.id })
  assert.equal(second.conversationId, first.conversationId)
  assert.equal(second.historyKept, 2)
  assert.deepEqual(sent(up, 1), [
    { role: 'user', content: 'remember: blue' },
    { role: 'assistant', content: first.text },
    { role: 'user', content: 'what did I say?' },
  ])
  const store = b.redisMessageStore()
  assert.deepEqual(await store.get(first.id), {
    id: first.id,
    role: 'assistant',
    text: first.text,
    parentMessageId: first.parentMessageId,
    conversationId: first.conversationId,
  })
  assert.equal(await store.get('nope'), undefined)
  await assert.rejects(store.set('other', { id: 'x', role: 'user', text: 'hi' }), InvalidRequestError)
  assert.equal(engine(up).redisMessageStore(), null, 'no [redis], no store')
})

test('bad input: empty text, unknown parent, a failing store, options that belong to the policy', async (t) => {
  const up = upstream(t)
  const { chatgpt, store } = api(up)
  await assert.rejects(chatgpt.sendMessage(''), (e) => e instanceof InvalidRequestError && e.code === 'empty')
  await assert.rejects(chatgpt.sendMessage('hi', { parentMessageId: 'gone' }), (e) => {
    assert.ok(e instanceof UnknownParentError)
    assert.equal(e.code, 'unknown_parent')
    assert.equal(e.parentMessageId, 'gone')
    return true
  })
  await assert.rejects(chatgpt.sendMessage('hi', { name: 'bob' }), InvalidRequestError)
  assert.equal(up.requests, 0)
  assert.equal(store.size, 0)

  // A store that fails reading the history: the call still answers (without the history it
  // could not read) and the store's error is reported, as the Rust core does.
  const broken = new Error('store down')
  const reading = api(up, { messageStore: { get: async () => { throw broken }, set: async () => true } }).chatgpt
  const answered = await reading.sendMessage('hi', { parentMessageId: 'p' })
  assert.ok(answered.text.length > 0)
  assert.equal(answered.historyKept, 0)
  assert.ok(answered.storeError instanceof MessageStoreError)
  assert.equal(answered.storeError.code, 'message_store')
  assert.equal(answered.storeError.cause, broken)
  assert.equal(up.requests, 1)
  // A store that fails writing after the call: the answer comes back, with storeError.
  const writing = api(up, { messageStore: { get: async () => undefined, set: async () => { throw broken } } }).chatgpt
  const r = await writing.sendMessage('hi')
  assert.equal(r.text.split(' ').length, 8)
  assert.ok(r.storeError instanceof MessageStoreError)
  assert.equal(r.storeError.cause, broken)
  assert.equal(up.requests, 2)

  // getMessageById / upsertMessage override the store, as in chatgpt.
  const seen = new Map()
  const custom = api(up, { getMessageById: (id) => seen.get(id), upsertMessage: (m) => void seen.set(m.id, m) }).chatgpt
  const c1 = await custom.sendMessage('one')
  await custom.sendMessage('two', { parentMessageId: c1.id })
  assert.equal(seen.size, 4)

  const tg = engine(up)
  const bad = (options, pattern) => assert.throws(() => new ChatGPTAPI({ tollgate: tg, model: 'gpt-4o', ...options }), pattern)
  bad({ apiKey: 'sk-x' }, /apiKey is not used: credentials live in the policy/)
  bad({ apiBaseUrl: 'http://x' }, /apiBaseUrl is not used/)
  bad({ model: undefined }, /name the model/)
  bad({ model: 'my-own-model' }, /context window of model 'my-own-model' is not known .*: set maxModelTokens/)
  bad({ maxModelTokens: 100, maxResponseTokens: 100 }, /leaves no room/)
  assert.throws(() => new ChatGPTAPI({ model: 'gpt-4o' }), /give tollgate/)
  const own = new ChatGPTAPI({ policy: policy(up), completionParams: { model: 'gpt-4o', temperature: 0.5 }, maxResponseTokens: 8 })
  await own.sendMessage('params')
  const body = JSON.parse(up.log().at(-1).body)
  assert.equal(body.temperature, 0.5)
  assert.equal(body.model, 'gpt-4o')
})

// The chatgpt package (v5) `_buildMessages`: messages are added newest first while the estimate
// fits maxModelTokens - maxResponseTokens, the estimate being the cl100k count of one string
// ("Instructions:\n<system>", "User:\n<text>", "ChatGPT:\n<text>", joined by blank lines): no
// per-message overhead and no reply priming, which the API bills.
async function chatgptRule(tg, model, system, history, user, budget) {
  const count = (text) =>
    tg.trimConversation({ model, user: text, window: 1e9, reserved: 0 }).promptTokens -
    tg.trimConversation({ model, user: '', window: 1e9, reserved: 0 }).promptTokens
  const label = (m) => (m.role === 'system' ? 'Instructions' : m.role === 'user' ? 'User' : 'ChatGPT')
  const estimate = (ms) => count(ms.map((m) => `${label(m)}:\n${m.text}`).join('\n\n'))
  let kept = 0
  for (let n = 0; n <= history.length; n++) {
    const ms = [{ role: 'system', text: system }, ...history.slice(history.length - n), { role: 'user', text: user }]
    if (estimate(ms) > budget) break
    kept = n
  }
  return kept
}

test('the same 10-turn conversation trimmed by the chatgpt package\'s rule and by tollgate', async (t) => {
  const up = upstream(t)
  const model = 'gpt-3.5-turbo'
  const system = 'You are a helpful assistant. Answer concisely.'
  const store = new MemoryMessageStore()
  const history = []
  let parent
  for (let i = 0; i < 10; i++) {
    const q = { id: `q${i}`, role: 'user', text: `Question ${i}: how does step ${i} of the rollout work, and what can go wrong?`, parentMessageId: parent, conversationId: 'c' }
    const a = { id: `a${i}`, role: 'assistant', text: `Step ${i} ships to ${i + 1} regions. ${'It is checked, then widened. '.repeat(3)}Roll back on errors.`, parentMessageId: q.id, conversationId: 'c' }
    for (const m of [q, a]) {
      await store.set(m.id, m)
      history.push({ role: m.role, text: m.text })
    }
    parent = a.id
  }
  const tg = engine(up)
  const user = 'Summarise the rollout.'
  const rows = []
  for (const window of [250, 300, 400, 500, 600, 700, 800]) {
    const reserved = 100
    const budget = window - reserved
    const chatgptKept = await chatgptRule(tg, model, system, history, user, budget)
    // What chatgpt would send, counted as the API bills it.
    const chatgptBilled = tg.trimConversation({ model, system, history: history.slice(history.length - chatgptKept), user, window: 1e9, reserved: 0 }).promptTokens
    const api = new ChatGPTAPI({ tollgate: tg, model, systemMessage: system, maxModelTokens: window, maxResponseTokens: reserved, messageStore: store })
    const r = await api.sendMessage(user, { parentMessageId: 'a9', messageId: `u-${window}` })
    assert.ok(r.promptTokens <= budget)
    assert.equal(r.promptTokens, r.usage.promptTokens)
    rows.push({ window, budget, chatgptKept, chatgptBilled, tollgateKept: r.historyKept, tollgateBilled: r.promptTokens })
    t.diagnostic(
      `window ${window} (prompt budget ${budget}): chatgpt keeps ${chatgptKept} messages (${chatgptKept / 2} turns), ` +
        `billed ${chatgptBilled} prompt tokens${chatgptBilled > budget ? ` — over the budget (prompt + max_tokens ${chatgptBilled + reserved} > window ${window})` : ''}; ` +
        `tollgate keeps ${r.historyKept} (${r.historyKept / 2} turns), billed ${r.promptTokens}`,
    )
  }
  // The estimate leaves out the per-message overhead the API bills: chatgpt keeps more than fits.
  assert.ok(rows.some((r) => r.chatgptBilled > r.budget), JSON.stringify(rows))
  for (const r of rows) assert.ok(r.chatgptKept >= r.tollgateKept, JSON.stringify(r))
})
