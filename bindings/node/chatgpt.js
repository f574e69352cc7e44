'use strict'
// ChatGPTAPI: the `chatgpt` npm package's class (v5, transitive-bullshit) over tollgate, so
// switching is an import change plus a policy. The conversation (parent links, storing after
// success) runs here over `send` / `stream`; the history is trimmed natively by the count the
// request's admission makes (`Tollgate.trimConversation`), and retries, budgets, deadlines
// and cancellation are tollgate's. See README.md, "ChatGPTAPI", for what differs from chatgpt.

const { randomUUID } = require('node:crypto')
const tg = require('./index.js')

/** Default for `maxResponseTokens` (chatgpt's). */
const DEFAULT_MAX_RESPONSE_TOKENS = 1000
/** Messages the default in-memory store holds (chatgpt's QuickLRU `maxSize`). */
const DEFAULT_MAX_MESSAGES = 10_000
/** Most history messages read back through parent links (a guard against loops in a store). */
const DEFAULT_MAX_HISTORY = 1000

/** chatgpt's constructor options that tollgate takes from the policy instead, and why. */
const NOT_HERE = {
  apiKey: 'credentials live in the policy ([[upstream]] auth: a key or a key pool)',
  apiBaseUrl: "where calls go is the policy's [[upstream]] base_url and [[route]]",
  apiOrg: 'no OpenAI-Organization header is sent: the policy\'s key decides the organization',
  fetch: 'tollgate makes the HTTP call itself',
}

function invalid(code, message) {
  return new tg.InvalidRequestError({ kind: 'invalid_argument', code, message: `ChatGPTAPI: ${message}` })
}

/** The message as stored: the chatgpt shape without the answer's detail. */
function stored(m) {
  const out = { id: m.id, role: m.role, text: m.text }
  if (m.parentMessageId != null) out.parentMessageId = m.parentMessageId
  if (m.conversationId != null) out.conversationId = m.conversationId
  return out
}

/** Usage in the OpenAI response's names. */
function openaiUsage(u) {
  return u == null
    ? undefined
    : { prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens, total_tokens: u.totalTokens }
}

/**
 * Messages in memory, Keyv-like (`get`, `set`, `delete`, `clear`), at most `maxSize` of them:
 * the least recently used is dropped first (chatgpt's default is a Keyv over a QuickLRU of
 * 10,000).
 */
class MemoryMessageStore {
  constructor({ maxSize = DEFAULT_MAX_MESSAGES } = {}) {
    if (!Number.isInteger(maxSize) || maxSize < 1) throw new TypeError('maxSize must be a positive integer')
    this._max = maxSize
    this._map = new Map()
  }

  /** Messages held. */
  get size() {
    return this._map.size
  }

  async get(id) {
    const m = this._map.get(id)
    if (m === undefined) return undefined
    this._map.delete(id)
    this._map.set(id, m)
    return { ...m }
  }

  async set(id, message) {
    this._map.delete(id)
    this._map.set(id, { ...message })
    while (this._map.size > this._max) this._map.delete(this._map.keys().next().value)
    return true
  }

  async delete(id) {
    return this._map.delete(id)
  }

  async clear() {
    this._map.clear()
  }
}

/**
 * The chatgpt package's ChatGPTAPI over tollgate: `sendMessage(text, { parentMessageId, ... })`
 * answers `{ id, text, role: 'assistant', parentMessageId, conversationId, detail }`, the
 * history rebuilt from parent links and trimmed by tollgate's exact count. Calls go through
 * `tollgate.send` / `tollgate.stream`: budgets, cache, retries, fallback and accounting are the
 * policy's.
 */
class ChatGPTAPI {
  constructor(opts = {}) {
    for (const [name, why] of Object.entries(NOT_HERE)) {
      if (opts[name] !== undefined) throw invalid('invalid_argument', `option ${name} is not used: ${why}; remove it`)
    }
    if (opts.tollgate !== undefined && opts.policy !== undefined) {
      throw invalid('invalid_argument', 'give either tollgate (an engine) or policy (its text), not both')
    }
    if (opts.tollgate !== undefined) {
      if (!(opts.tollgate instanceof tg.Tollgate)) throw invalid('invalid_argument', 'tollgate must be a Tollgate')
      this._tollgate = opts.tollgate
    } else if (opts.policy !== undefined) {
      this._tollgate = new tg.Tollgate(opts.policy)
    } else {
      throw invalid('invalid_argument', 'give tollgate (a Tollgate) or policy (policy text, { text } or { path })')
    }
    this._completionParams = { ...(opts.completionParams ?? {}) }
    this._model = opts.model ?? this._completionParams.model
    if (typeof this._model !== 'string' || this._model === '') {
      throw invalid('invalid_argument', 'name the model: model, or completionParams.model')
    }
    delete this._completionParams.model
    this._windowGiven = opts.maxModelTokens !== undefined
    this._maxModelTokens = this._windowGiven ? opts.maxModelTokens : this._window(this._model)
    this._maxResponseTokens = opts.maxResponseTokens ?? DEFAULT_MAX_RESPONSE_TOKENS
    for (const [name, v] of [
      ['maxModelTokens', this._maxModelTokens],
      ['maxResponseTokens', this._maxResponseTokens],
    ]) {
      if (!Number.isInteger(v) || v < 1) throw invalid('invalid_argument', `${name} must be a positive integer (got ${v})`)
    }
    if (this._maxResponseTokens >= this._maxModelTokens) {
      throw invalid(
        'no_room',
        `maxResponseTokens (${this._maxResponseTokens}) leaves no room for a prompt in maxModelTokens (${this._maxModelTokens})`,
      )
    }
    this._systemMessage = opts.systemMessage || undefined
    this._tenant = opts.tenant ?? undefined
    this._debug = opts.debug === true
    this._maxHistory = opts.maxHistory ?? DEFAULT_MAX_HISTORY
    this._messageStore = opts.messageStore ?? new MemoryMessageStore()
    const store = this._messageStore
    if (!opts.getMessageById && typeof store.get !== 'function') throw invalid('invalid_argument', 'messageStore needs get(id)')
    if (!opts.upsertMessage && typeof store.set !== 'function') throw invalid('invalid_argument', 'messageStore needs set(id, message)')
    this._getMessageById = opts.getMessageById ?? ((id) => store.get(id))
    this._upsertMessage = opts.upsertMessage ?? ((message) => store.set(message.id, message))
  }

  /** The engine the calls go through. */
  get tollgate() {
    return this._tollgate
  }

  /** The model asked for. */
  get model() {
    return this._model
  }

  /** The context window the history is trimmed to (with maxResponseTokens kept for the answer). */
  get maxModelTokens() {
    return this._maxModelTokens
  }

  /** Tokens kept for the answer (sent as max_tokens). */
  get maxResponseTokens() {
    return this._maxResponseTokens
  }

  /** The context window of `model` from the policy's model table; throws when unknown. */
  _window(model) {
    const w = this._tollgate.contextWindow(model)
    if (w === null) {
      throw invalid(
        'unknown_window',
        `the context window of model '${model}' is not known (not in the policy's [models] or the bundled table): set maxModelTokens`,
      )
    }
    return w
  }

  /** The stored message with this id (undefined when there is none), as sendMessage reads it. */
  async getMessageById(id) {
    return this._getMessageById(id)
  }

  /** Stores a message (chatgpt shape), as sendMessage does after a successful call. */
  async upsertMessage(message) {
    return this._upsertMessage(message)
  }

  /**
   * The history before `parentMessageId`, oldest first, and the store's error if reading failed
   * (the call still answers, with the history read until then: as the Rust core does); refuses
   * an unknown parent.
   */
  async _history(parentMessageId) {
    const out = []
    let next = parentMessageId
    while (next != null && out.length < this._maxHistory) {
      let m
      try {
        m = await this._getMessageById(next)
      } catch (e) {
        const storeError = new tg.MessageStoreError(
          {
            kind: 'message_store',
            code: 'message_store',
            message: `the message store failed reading message ${next}: ${e?.message ?? e}; sent without the history before it`,
          },
          { cause: e },
        )
        return { history: out.reverse(), storeError }
      }
      if (m == null) {
        if (out.length > 0) break // an older message expired: the history starts after it
        throw new tg.UnknownParentError({
          kind: 'unknown_parent',
          code: 'unknown_parent',
          message:
            `parent message ${next} is not in the message store (expired, evicted or never stored); ` +
            'send without parentMessageId to start a new conversation',
          parentMessageId: next,
        })
      }
      out.push(m)
      next = m.parentMessageId
    }
    return { history: out.reverse(), storeError: null }
  }

  /**
   * Sends `text` after `opts.parentMessageId` and resolves to the answer: { id, text, role:
   * 'assistant', parentMessageId, conversationId, detail, usage, settlement, promptTokens,
   * historyKept, historyDropped, storeError }. Streams when `stream` or `onProgress` is set,
   * calling onProgress with the answer so far ({ ..., text, delta }). The user's message and
   * the answer are stored only once the call succeeded.
   */
  async sendMessage(text, opts = {}) {
    const {
      parentMessageId,
      messageId = randomUUID(),
      timeoutMs,
      onProgress,
      abortSignal,
      systemMessage,
      completionParams,
    } = opts
    const stream = opts.stream ?? typeof onProgress === 'function'
    if (opts.name !== undefined) {
      throw invalid('invalid_argument', 'name is not supported: the history is counted and stored by role and text only')
    }
    if (typeof text !== 'string' || text.length === 0) throw invalid('empty', 'the message is empty')
    if (abortSignal?.aborted) throw new tg.AbortError(abortSignal.reason)

    const { history, storeError: readError } = await this._history(parentMessageId ?? undefined)
    const params = { ...this._completionParams, ...(completionParams ?? {}) }
    const model = params.model ?? this._model
    delete params.model
    const window = this._windowGiven || model === this._model ? this._maxModelTokens : this._window(model)
    const trimmed = this._tollgate.trimConversation({
      model,
      system: systemMessage || this._systemMessage,
      history: history.map((m) => ({ role: m.role, text: m.text })),
      user: text,
      window,
      reserved: this._maxResponseTokens,
    })
    const conversationId = opts.conversationId ?? history.at(-1)?.conversationId ?? randomUUID()
    const user = stored({ id: messageId, role: 'user', text, parentMessageId, conversationId })
    const result = { id: randomUUID(), text: '', role: 'assistant', parentMessageId: messageId, conversationId }

    const body = { model, ...params, messages: trimmed.messages, max_tokens: this._maxResponseTokens }
    delete body.max_completion_tokens
    if (stream) body.stream = true
    else delete body.stream
    const call = { signal: abortSignal, deadline: timeoutMs, tenant: opts.tenant ?? this._tenant }
    if (this._debug) {
      console.debug(
        `ChatGPTAPI: ${model}, ${trimmed.promptTokens} prompt tokens${trimmed.exact ? '' : ' (estimated)'}, ` +
          `history ${trimmed.kept} kept, ${trimmed.dropped} dropped, window ${window} - ${this._maxResponseTokens}`,
      )
    }

    let detail
    let usage
    let settlement
    if (stream) {
      const s = await this._tollgate.stream(body, call)
      let first = null
      let finishReason = null
      for await (const chunk of s) {
        first ??= chunk
        const choice = chunk.choices?.[0]
        if (!choice) continue
        if (choice.finish_reason) finishReason = choice.finish_reason
        const delta = choice.delta?.content
        if (typeof delta === 'string' && delta.length > 0) {
          result.text += delta
          if (onProgress) onProgress({ ...result, delta })
        }
      }
      usage = s.usage
      settlement = s.settlement
      detail = {
        id: first?.id ?? result.id,
        object: 'chat.completion',
        created: first?.created ?? Math.floor(Date.now() / 1000),
        model: first?.model ?? model,
        choices: [{ index: 0, message: { role: 'assistant', content: result.text }, finish_reason: finishReason }],
        usage: openaiUsage(usage),
      }
    } else {
      const r = await this._tollgate.send(body, call)
      detail = r.body
      const content = detail?.choices?.[0]?.message?.content
      if (typeof content !== 'string') {
        throw new tg.TollgateError({
          kind: 'no_text',
          code: 'no_text',
          message: `the answer has no message text: ${r.bodyText.slice(0, 500)}`,
        })
      }
      result.text = content
      usage = r.usage
      settlement = r.settlement
    }

    // Stored only now: a call that failed leaves the conversation as it was.
    let storeError = readError
    for (const m of [user, stored(result)]) {
      try {
        await this._upsertMessage(m)
      } catch (e) {
        storeError ??= new tg.MessageStoreError(
          {
            kind: 'message_store',
            code: 'message_store',
            message: `the message store failed storing message ${m.id}: ${e?.message ?? e}; the answer is not kept`,
          },
          { cause: e },
        )
      }
    }
    if (storeError && this._debug) console.debug(`ChatGPTAPI: ${storeError.message}`)
    return {
      ...result,
      detail,
      usage: usage ?? null,
      settlement: settlement ?? null,
      promptTokens: trimmed.promptTokens,
      historyKept: trimmed.kept,
      historyDropped: trimmed.dropped,
      storeError,
    }
  }
}

module.exports = { ChatGPTAPI, MemoryMessageStore }
