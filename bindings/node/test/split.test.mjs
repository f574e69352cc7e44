// splitText: chunks within maxTokens that give the text back, UTF-16 offsets, typed errors;
// countTokens / countRequest and the engine's splitText with the policy's model table.
import assert from 'node:assert/strict'
import { test } from 'node:test'

import { InvalidRequestError, countTokens, splitText } from '../index.js'
import { engine, upstream } from './helpers.mjs'

test('chunks fit, are cut between paragraphs, and join back to the text', () => {
  const text = 'First paragraph, short.\n\nSecond paragraph. It has two sentences.'
  const chunks = splitText('gpt-4o', text, 12)
  assert.deepEqual(
    chunks.map((c) => c.text),
    ['First paragraph, short.\n\n', 'Second paragraph. It has two sentences.'],
  )
  for (const c of chunks) {
    assert.ok(c.tokens <= 12 && c.exact && c.overlap === 0)
    assert.equal(text.slice(c.start, c.end), c.text)
  }
  assert.equal(chunks.map((c) => c.text).join(''), text)
})

test('offsets are UTF-16 units, so slice works past emoji and CJK', () => {
  const text = '😀 emoji first. 今天天气很好。我们一起去公园散步吧！'.repeat(40) + '\n\nend 👍🏽'
  for (const overlap of [0, 5]) {
    const chunks = splitText('gpt-4o', text, 30, { overlap })
    assert.ok(chunks.length > 3)
    let fresh = ''
    for (const [i, c] of chunks.entries()) {
      assert.ok(c.tokens <= 30, `chunk ${i}: ${c.tokens}`)
      assert.equal(text.slice(c.start, c.end), c.text, `chunk ${i}`)
      assert.equal(c.overlap > 0, overlap > 0 && i > 0, `chunk ${i}`)
      if (i > 0) assert.equal(c.start + c.overlap, chunks[i - 1].end)
      fresh += c.text.slice(c.overlap)
    }
    assert.equal(fresh, text)
  }
})

test('an estimated model says so', () => {
  const chunks = splitText('qwen-max', 'Hello there. '.repeat(100), 40)
  assert.ok(chunks.length > 1)
  assert.ok(chunks.every((c) => !c.exact && c.tokens <= 40))
})

test('a lone surrogate becomes U+FFFD in the text, the offsets still index the input', () => {
  const text = 'before \ud800 after. '.repeat(20)
  const chunks = splitText('gpt-4o', text, 10)
  const last = chunks.at(-1)
  assert.equal(last.end, text.length)
  assert.equal(chunks.map((c) => c.text).join(''), text.replaceAll('\ud800', '\ufffd'))
})

test('bad input throws InvalidRequestError with a stable code', () => {
  const cases = [
    [['gpt-4o', 'hi', 0], 'zero_max', /max_tokens is 0/],
    [['gpt-4o', 'hi', 10, { overlap: 10 }], 'overlap_too_large', /smaller than max_tokens/],
    [['gpt-4o', 'hi', 200000], 'exceeds_context_window', /context window of 'gpt-4o' \(128000/],
    [['gtp-4o', 'hi', 10], 'unknown_model', /check the name/],
    [['gpt-4o', '', 10], 'empty', /empty/],
    [['qwen-max', '字', 1], 'char_too_large', /character at byte 0/],
  ]
  for (const [args, code, message] of cases) {
    assert.throws(
      () => splitText(...args),
      (e) => e instanceof InvalidRequestError && e.code === code && message.test(e.message),
      code,
    )
  }
  for (const args of [
    ['gpt-4o', 'hi', -1],
    ['gpt-4o', 'hi', 1.5],
    ['gpt-4o', 'hi', '10'],
    ['gpt-4o', 'hi', 10, { overlap: -2 }],
    ['gpt-4o', 42, 10],
    [undefined, 'hi', 10],
  ]) {
    assert.throws(() => splitText(...args), TypeError, JSON.stringify(args))
  }
})

test('countTokens and the engine\'s countRequest / splitText use the policy\'s model table', async (t) => {
  const up = upstream(t)
  const tg = engine(up, '[models]\nmy-model = { encoding = "cl100k_base", context_window = 4096 }\n')
  assert.deepEqual(countTokens('gpt-4o', 'hello world'), { tokens: 2, exact: true })
  assert.equal(countTokens('qwen-max', 'hello world').exact, false)
  assert.deepEqual(tg.countTokens('my-model', 'hello world'), { tokens: 2, exact: true })
  const text = 'Rate limits protect the upstream. 今天天气很好。\n\n'.repeat(60)
  const chunks = tg.splitText('my-model', text, 40)
  assert.deepEqual(chunks, splitText('gpt-4', text, 40), 'cl100k, like gpt-4')
  for (const c of chunks) assert.equal(tg.countTokens('my-model', c.text).tokens, c.tokens)
  // The prompt count is the one the upstream bills.
  const request = { model: 'gpt-4o', messages: [{ role: 'user', content: 'How many tokens is this prompt?' }], max_tokens: 8 }
  const counted = tg.countRequest(request)
  const r = await tg.send(request)
  assert.equal(counted.tokens, r.usage.promptTokens)
  assert.equal(tg.countRequest(JSON.stringify(request)).tokens, counted.tokens)
  for (const [call, code] of [
    [() => countTokens('no-such-model', 'x'), 'unknown_model'],
    [() => tg.countTokens('no-such-model', 'x'), 'unknown_model'],
    [() => splitText('my-model', text, 40), 'unknown_model'],
    [() => tg.splitText('my-model', text, 5000), 'exceeds_context_window'],
    [() => tg.countRequest('{nope'), 'invalid_request'],
    [() => tg.countRequest({ messages: [] }), 'invalid_request'],
  ]) {
    assert.throws(call, (e) => e instanceof InvalidRequestError && e.code === code, code)
  }
  assert.throws(() => tg.countTokens(1, 'x'), TypeError)
  assert.throws(() => countTokens('gpt-4o', null), TypeError)
})
