'use strict'
// tollgate for Node.js: the idiomatic layer over the native addon (native.js).
//
// The decide path (admit / settle) passes numbers through one shared Float64Array (`io`) and
// names as interned ids, so a pair is two native calls without arguments; the slots are
// src/decide.rs's, read from the addon when this file loads (`native.ioLayout()`). Everything
// else crosses as objects, and errors as a JSON payload that `toError` turns into the
// TollgateError subclasses below.

const { EventEmitter } = require('node:events')
const native = require('./native.js')

const io = native.io()
// The layout of `io` (its slots, the bits of its FLAGS slot, the NAMED id) comes from the addon
// (src/decide.rs), read once here into constants: this file has no copy of the numbers. A layout
// that lacks a name used here, or whose slots clash, means the addon and this file are from
// different builds: loading fails rather than mixing up numbers.
if (typeof native.ioLayout !== 'function') {
  throw new Error('tollgate: the native addon has no ioLayout(): it is older than index.js; rebuild it (npm run build)')
}
const layout = native.ioLayout()
const slotNames = new Map()

function badLayout(what) {
  return new Error(
    `tollgate: the native addon's io layout ${what}; index.js and the addon come from different ` +
      'builds: rebuild the addon (npm run build)',
  )
}

/** The index of the slot `name`: an integer inside `io`, no other name's. */
function slot(name) {
  const i = layout.slots[name]
  if (!Number.isInteger(i) || i < 0 || i >= io.length) {
    throw badLayout(`has no slot ${name} inside io (got ${i}; io has ${io.length} slots)`)
  }
  if (slotNames.has(i)) throw badLayout(`puts ${name} and ${slotNames.get(i)} in the same slot ${i}`)
  slotNames.set(i, name)
  return i
}

/** The bit of the flag `name`. */
function flag(name) {
  const bit = layout.flags[name]
  if (!Number.isInteger(bit) || bit <= 0 || (bit & (bit - 1)) !== 0) {
    throw badLayout(`has no flag ${name} (got ${bit})`)
  }
  return bit
}

if (layout.len !== io.length) throw badLayout(`is for ${layout.len} slots, its io array has ${io.length}`)
const ENGINE = slot('ENGINE')
const PROMPT_TOKENS = slot('PROMPT_TOKENS')
const MAX_TOKENS = slot('MAX_TOKENS')
const PRIORITY = slot('PRIORITY')
const DEADLINE_MS = slot('DEADLINE_MS')
const MODEL = slot('MODEL')
const TENANT = slot('TENANT')
const UPSTREAM = slot('UPSTREAM')
const KEY = slot('KEY')
const ROUTE = slot('ROUTE')
const PERMIT = slot('PERMIT')
const STATUS = slot('STATUS')
const USAGE_PROMPT = slot('USAGE_PROMPT')
const USAGE_COMPLETION = slot('USAGE_COMPLETION')
const USAGE_TOTAL = slot('USAGE_TOTAL')
const USAGE_CACHED = slot('USAGE_CACHED')
const USAGE_REASONING = slot('USAGE_REASONING')
const LATENCY_MS = slot('LATENCY_MS')
const FLAGS = slot('FLAGS')
const OUT_RESERVED = slot('OUT_RESERVED')
const OUT_TOKENS = slot('OUT_TOKENS')
const OUT_SPEND = slot('OUT_SPEND')
const OUT_COST_INPUT = slot('OUT_COST_INPUT')
const OUT_COST_CACHED = slot('OUT_COST_CACHED')
const OUT_COST_OUTPUT = slot('OUT_COST_OUTPUT')
const FLAG_SENT = flag('FLAG_SENT')
const FLAG_CONTENT_DELIVERED = flag('FLAG_CONTENT_DELIVERED')
// A name not interned (the thread's table is full): passed as an argument instead.
const NAMED = layout.named
if (!Number.isInteger(NAMED) || NAMED >= -1) throw badLayout(`has no NAMED id below -1 (got ${NAMED})`)

// ---------------------------------------------------------------------------------------------
// Errors

/** Every error tollgate raises: `code` is the stable code of the Rust API. */
class TollgateError extends Error {
  constructor(info, options) {
    super(info.message, options)
    this.name = 'TollgateError'
    this.kind = info.kind
    this.code = info.code
  }
}

/** A budget refused the call: `code` is the reason (`budget_exhausted`, `concurrency`, ...). */
class DeniedError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'DeniedError'
    this.budget = info.budget ?? null
    this.key = info.key ?? null
    this.limit = info.limit ?? null
    this.retryAfterMs = info.retryAfterMs ?? null
  }
}

/** The call failed and was not retried further: `code` is why (`attempts_exhausted`, ...). */
class GaveUpError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'GaveUpError'
    this.httpStatus = info.httpStatus ?? null
    this.body = info.body ?? null
    this.history = info.history ?? []
  }
}

/** The call's deadline passed. */
class DeadlineError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'DeadlineError'
  }
}

/** The request is not a chat request tollgate can send (or an argument is wrong). */
class InvalidRequestError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'InvalidRequestError'
  }
}

/** Nothing in the policy says where the call goes. */
class NoUpstreamError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'NoUpstreamError'
  }
}

/** The credentials could not be read or obtained. */
class AuthError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'AuthError'
  }
}

/** The transport could not be set up (or the identical call this one waited for failed). */
class TransportError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'TransportError'
  }
}

/** A stream broke off after content had reached the caller; it is not retried. */
class StreamCutError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'StreamCutError'
    this.settlement = info.settlement ?? null
  }
}

/** A policy was refused: `problems` lists every error (path, line, what to do). */
class PolicyError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'PolicyError'
    this.problems = info.problems ?? []
  }
}

/** The call was cancelled through its AbortSignal (`name` is 'AbortError', as for fetch). */
class AbortError extends TollgateError {
  constructor(reason) {
    super(
      { kind: 'aborted', code: 'ABORT_ERR', message: 'The operation was aborted' },
      reason === undefined ? undefined : { cause: reason },
    )
    this.name = 'AbortError'
  }
}

/**
 * A conversation does not fit its window: the system message and the new user message alone
 * need `needed` prompt tokens, more than the `budget` the window leaves (`window` minus
 * `reserved` for the answer). Nothing was sent.
 */
class TooLongError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'TooLongError'
    this.needed = info.needed ?? null
    this.budget = info.promptBudget ?? null
    this.window = info.window ?? null
    this.reserved = info.reserved ?? null
  }
}

/** A parent message id that is not in the message store (expired, evicted or never stored). */
class UnknownParentError extends TollgateError {
  constructor(info) {
    super(info)
    this.name = 'UnknownParentError'
    this.parentMessageId = info.parentMessageId ?? null
  }
}

/** A message store failed (`cause`: the store's own error, when it threw one). */
class MessageStoreError extends TollgateError {
  constructor(info, options) {
    super(info, options)
    this.name = 'MessageStoreError'
  }
}

const classes = {
  denied: DeniedError,
  gave_up: GaveUpError,
  deadline: DeadlineError,
  invalid_request: InvalidRequestError,
  invalid_argument: InvalidRequestError,
  no_upstream: NoUpstreamError,
  auth: AuthError,
  transport: TransportError,
  shared: TransportError,
  stream_cut: StreamCutError,
  policy: PolicyError,
  too_long: TooLongError,
  message_store: MessageStoreError,
}

/** The error for a native payload (an object, or an Error whose message is its JSON). */
function toError(e, signal) {
  let info = e
  if (e instanceof Error) {
    if (typeof e.message !== 'string' || e.message[0] !== '{') return e
    try {
      info = JSON.parse(e.message)
    } catch {
      return e
    }
  }
  if (info.kind === 'aborted') return new AbortError(signal?.reason)
  const Class = classes[info.kind] ?? TollgateError
  return new Class(info)
}

/** The decision for admit's answer when it is not a go: a wait or a denial. */
function notGo(r) {
  if (r.kind === 'wait') {
    return { kind: 'wait', afterMs: r.afterMs, budget: r.budget, key: r.key, limit: r.limit ?? null }
  }
  return { kind: 'deny', error: toError(r.error) }
}

function abortError(signal) {
  return new AbortError(signal?.reason)
}

// ---------------------------------------------------------------------------------------------
// Names, permits

const names = new Map()

/** The interned id of a name: -1 for none, NAMED when it must go as an argument. */
function nameId(name) {
  if (name === undefined || name === null || name === '') return -1
  let id = names.get(name)
  if (id === undefined) {
    if (typeof name !== 'string') throw new TypeError(`expected a string, got ${typeof name}`)
    id = native.intern(name)
    if (id < 0) return NAMED
    names.set(name, id)
  }
  return id
}

// Permits that outlive the turn that admitted them are tracked for garbage collection: one the
// program drops unsettled is released (as if never sent). Tracking costs a few hundred
// nanoseconds, so a permit settled in the same turn (the common decide-in-a-loop case) skips it.
const registry = new FinalizationRegistry(({ engine, handle }) => engine.release(handle))
let untracked = []
let sweepQueued = false

function sweep() {
  sweepQueued = false
  const list = untracked
  untracked = []
  for (const p of list) {
    if (!p._done) {
      p._tracked = true
      registry.register(p, { engine: p._engine, handle: p._handle }, p)
    }
  }
}

function track(permit) {
  untracked.push(permit)
  if (!sweepQueued) {
    sweepQueued = true
    queueMicrotask(sweep)
  }
}

function untrack(permit) {
  permit._done = true
  if (permit._tracked) registry.unregister(permit)
  else if (untracked[untracked.length - 1] === permit) untracked.pop()
}

/** Capacity held by an admitted call: settle it with `tollgate.settle`, or `release()` it. */
class Permit {
  constructor(owner, engine, handle) {
    this._owner = owner
    this._engine = engine
    this._handle = handle
    this._done = false
    this._tracked = false
  }

  /** What the permit holds (null once settled or released). */
  info() {
    return this._done ? null : this._engine.permitInfo(this._handle)
  }

  /** Gives the capacity back as if the call was not sent; false if already settled/released. */
  release() {
    if (this._done) return false
    untrack(this)
    return this._engine.release(this._handle)
  }

  /** Whether the permit was settled or released. */
  get settled() {
    return this._done
  }
}

/** The state a retry carries (from a `retry` verdict); pass it as `call.attempt`. */
class Attempt {
  constructor(external, afterMs, target) {
    this._external = external
    this.afterMs = afterMs
    this.target = target
  }
}

function usageNumbers(u) {
  const prompt = u.promptTokens ?? u.prompt_tokens ?? u.input_tokens ?? 0
  const completion = u.completionTokens ?? u.completion_tokens ?? u.output_tokens ?? 0
  io[USAGE_PROMPT] = prompt
  io[USAGE_COMPLETION] = completion
  io[USAGE_TOTAL] = u.totalTokens ?? u.total_tokens ?? -1
  io[USAGE_CACHED] =
    u.cachedPromptTokens ??
    u.prompt_tokens_details?.cached_tokens ??
    u.input_tokens_details?.cached_tokens ??
    0
  io[USAGE_REASONING] =
    u.reasoningTokens ??
    u.completion_tokens_details?.reasoning_tokens ??
    u.output_tokens_details?.reasoning_tokens ??
    0
}

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

function num(v, fallback) {
  return typeof v === 'number' && Number.isFinite(v) ? v : fallback
}

// ---------------------------------------------------------------------------------------------
// The call API: responses and streams

let nextId = 1
function callId() {
  const id = nextId
  nextId = nextId >= 0xfffffff0 ? 1 : nextId + 1
  return id
}

function callOptions(opts) {
  const deadline = opts.deadlineMs ?? opts.deadline
  return {
    tenant: opts.tenant,
    route: opts.route,
    upstream: opts.upstream,
    priority: opts.priority,
    deadlineMs: typeof deadline === 'number' ? deadline : undefined,
    cache: opts.cache,
  }
}

function bodyText(request) {
  if (typeof request === 'string') return request
  if (request === null || typeof request !== 'object') {
    throw new InvalidRequestError({
      kind: 'invalid_request',
      code: 'invalid_request',
      message: 'the request must be an OpenAI chat-completions body (an object)',
    })
  }
  return JSON.stringify(request)
}

/** The answer of `send`. */
class ChatResponse {
  constructor(r) {
    const m = JSON.parse(r.meta)
    this.status = r.status
    this.headers = m.headers
    this.bodyText = r.body
    this.usage = m.usage ?? null
    this.settlement = m.settlement ?? null
    this.target = m.target ?? null
    this.attempts = m.attempts
    this.history = m.history
    this.source = m.source
    this.queuedMs = m.queuedMs
    this._body = undefined
  }

  /** The JSON body, parsed (once). */
  get body() {
    if (this._body === undefined) this._body = JSON.parse(this.bodyText)
    return this._body
  }

  /** The first choice's message content, when there is one. */
  get content() {
    return this.body?.choices?.[0]?.message?.content ?? null
  }
}

/**
 * A streamed answer: an async iterator of chunks (parsed JSON; `raw: true` gives the events
 * themselves, `[DONE]` included). After the loop `usage` and `settlement` hold what the call
 * used and was charged. Leaving the loop early (`break`) cancels the call.
 */
class ChatStream {
  constructor(stream, signal, raw) {
    const head = stream.head
    this._stream = stream
    this._signal = signal
    this._raw = raw
    this._events = []
    this._named = null
    this._at = 0
    this._done = false
    this._aborted = false
    this._cancelled = null
    this._onAbort = null
    this.status = head.status
    this.headers = head.headers
    this.source = head.source
    this.attempts = head.attempts
    this.history = head.history
    this.target = head.target ?? null
    this.queuedMs = head.queuedMs
    this.usage = null
    this.settlement = null
    if (signal) {
      this._onAbort = () => {
        this._aborted = true
        this._cancel()
      }
      signal.addEventListener('abort', this._onAbort, { once: true })
    }
  }

  [Symbol.asyncIterator]() {
    return this
  }

  /** Cancels the native stream once; resolves when its permit has been released. */
  _cancel() {
    if (this._cancelled === null) this._cancelled = this._stream.cancel()
    return this._cancelled
  }

  _finish() {
    this._done = true
    this._events = []
    if (this._onAbort) this._signal.removeEventListener('abort', this._onAbort)
  }

  /** The raw event at index i of the current batch: { event, data, id } as the upstream framed it. */
  _event(i, data) {
    const n = this._named?.get(i)
    const e = { data }
    if (n?.[1] != null) e.event = n[1]
    if (n?.[2] != null) e.id = n[2]
    return e
  }

  async next() {
    for (;;) {
      if (this._at < this._events.length) {
        const i = this._at++
        const data = this._events[i]
        if (this._raw) return { value: this._event(i, data), done: false }
        if (data === '[DONE]') continue
        return { value: JSON.parse(data), done: false }
      }
      if (this._done) return { value: undefined, done: true }
      let batch
      try {
        batch = await this._stream.next()
      } catch (e) {
        this._finish()
        const err = toError(e, this._signal)
        if (err instanceof StreamCutError) this.settlement = err.settlement
        throw err
      }
      if (this._aborted) {
        this._finish()
        await this._cancel()
        throw abortError(this._signal)
      }
      this._events = batch.data
      this._named = batch.named ? new Map(JSON.parse(batch.named).map((n) => [n[0], n])) : null
      this._at = 0
      if (batch.done) {
        if (batch.end) {
          this.usage = batch.end.usage ?? null
          this.settlement = batch.end.settlement ?? null
          this.target = batch.end.target ?? this.target
          this.attempts = batch.end.attempts
        }
        const events = this._events
        this._finish()
        this._events = events
        this._done = true
      }
    }
  }

  /** Stops the stream (what `break` in `for await` does): connection closed, slot freed. */
  async return(value) {
    if (!this._done) {
      this._finish()
      await this._cancel()
    }
    return { value, done: true }
  }

  /** Stops the stream, then throws `error`. */
  async throw(error) {
    await this.return()
    throw error
  }

  /** Cancels the stream; resolves once the call's permit has been released. */
  cancel() {
    this._finish()
    return this._cancel()
  }
}

// ---------------------------------------------------------------------------------------------
// Watch

/**
 * A running watch of a policy file. Events: 'reload' (the report), 'refused' (PolicyError: the
 * new file has errors, the old policy runs on), 'unreadable' (PolicyError). close() stops it.
 */
class PolicyWatcher extends EventEmitter {
  constructor(watcher) {
    super()
    this._watcher = watcher
    this._closed = false
    this._loop = this._run()
  }

  async _run() {
    for (;;) {
      const ev = await this._watcher.next()
      if (ev === null || this._closed) return
      if (ev.kind === 'reloaded') this.emit('reload', ev.report)
      else this.emit(ev.kind, toError(ev.error))
    }
  }

  /** Stops watching; resolves once the watch thread ended. */
  async close() {
    if (this._closed) return
    this._closed = true
    this._watcher.close()
    await this._loop
  }
}

// ---------------------------------------------------------------------------------------------
// The engine

function policyArgs(policy) {
  if (typeof policy === 'string') return [policy, false]
  if (policy && typeof policy.path === 'string') return [policy.path, true]
  if (policy && typeof policy.text === 'string') return [policy.text, false]
  throw new TypeError('policy must be the policy text, { text } or { path }')
}

/** The policy engine: budgets, token accounting, cache, retries, and the calls themselves. */
class Tollgate {
  /** An engine from policy text (TOML or JSON), `{ text }` or `{ path }`. Throws PolicyError. */
  constructor(policy) {
    try {
      this._native = new native.NativeEngine(...policyArgs(policy))
    } catch (e) {
      throw toError(e)
    }
    this._index = this._native.index
    this._fetch = null
    // Calls of send waiting for their answer, by id. The native side hands every answer to one
    // function (no promise and no threadsafe function per call). The native engine holds that
    // function, so it reaches the engine only through a WeakRef: an engine nobody holds can
    // still be collected (a call in flight holds it through its own frame).
    const waiting = new Map()
    const engine = new WeakRef(this._native)
    this._waiting = waiting
    this._native.listenAnswers((id, error, response) => {
      const w = waiting.get(id)
      if (w === undefined) return
      waiting.delete(id)
      if (waiting.size === 0) engine.deref()?.refAnswers(false)
      if (error !== null) w.reject(JSON.parse(error))
      else w.resolve(response)
    })
  }

  /** Number of accepted policies so far (1 for the first). */
  get generation() {
    return this._native.generation
  }

  /**
   * Replaces the policy (text, `{ text }` or `{ path }`); returns the new generation. A
   * refused policy throws PolicyError with every problem, and the running one stays.
   */
  reload(policy) {
    return this.reloadReport(policy).generation
  }

  /** As `reload`, returning what changed: { generation, added, kept, removed, rescoped }. */
  reloadReport(policy) {
    try {
      return this._native.reload(...policyArgs(policy))
    } catch (e) {
      throw toError(e)
    }
  }

  /** Watches a policy file and reloads it when it changes (see PolicyWatcher). */
  watch(path, options = {}) {
    const w = new PolicyWatcher(this._native.watch(path, options.intervalMs))
    if (options.onReload) w.on('reload', options.onReload)
    if (options.onError) {
      w.on('refused', options.onError)
      w.on('unreadable', options.onError)
    }
    return w
  }

  /**
   * Decides whether a call may go now: { kind: 'go', permit } | { kind: 'wait', afterMs,
   * budget, key, limit } | { kind: 'deny', error: DeniedError }. A wait with budget '' is for
   * the call's route: every target is passed over (an open circuit) for afterMs.
   */
  admit(call) {
    io[ENGINE] = this._index
    const model = nameId(call.model)
    const tenant = nameId(call.tenant)
    const upstream = nameId(call.upstream)
    const key = nameId(call.key)
    const route = nameId(call.route)
    io[MODEL] = model
    io[TENANT] = tenant
    io[UPSTREAM] = upstream
    io[KEY] = key
    io[ROUTE] = route
    const tokens = call.promptTokens
    io[PROMPT_TOKENS] = typeof tokens === 'number' ? tokens : -1
    io[MAX_TOKENS] = num(call.maxTokens, -1)
    io[PRIORITY] = num(call.priority, 0)
    io[DEADLINE_MS] = num(call.deadlineMs, -1)
    if (call.attempt !== undefined && call.attempt !== null) {
      this._native.setAttempt(call.attempt._external)
    }
    let r
    if (
      model === NAMED ||
      tenant === NAMED ||
      upstream === NAMED ||
      key === NAMED ||
      route === NAMED ||
      (typeof tokens !== 'number' && (call.prompt !== undefined || call.request !== undefined))
    ) {
      const request = call.request
      r = native.admit(
        model === NAMED ? call.model : undefined,
        tenant === NAMED ? call.tenant : undefined,
        upstream === NAMED ? call.upstream : undefined,
        key === NAMED ? call.key : undefined,
        route === NAMED ? call.route : undefined,
        call.prompt,
        request === undefined || typeof request === 'string' ? request : JSON.stringify(request),
      )
    } else {
      r = native.admitFast()
    }
    if (typeof r === 'number') return this._go(r)
    return notGo(r)
  }

  /**
   * As admit(), without blocking the event loop while budgets kept in Redis are asked (the
   * round trip is awaited off the JavaScript thread): resolves to the same decision. With
   * local budgets only it answers at once, but admit() is cheaper there.
   */
  async admitAsync(call) {
    if (call.attempt !== undefined && call.attempt !== null) {
      this._native.setAttempt(call.attempt._external)
    }
    const tokens = call.promptTokens
    const request = call.request
    let r
    try {
      r = await this._native.admitAsync({
        model: call.model ?? undefined,
        tenant: call.tenant ?? undefined,
        upstream: call.upstream ?? undefined,
        key: call.key ?? undefined,
        route: call.route ?? undefined,
        promptTokens: typeof tokens === 'number' ? tokens : undefined,
        prompt: call.prompt ?? undefined,
        request: request === undefined || request === null || typeof request === 'string' ? (request ?? undefined) : JSON.stringify(request),
        maxTokens: typeof call.maxTokens === 'number' ? call.maxTokens : undefined,
        priority: typeof call.priority === 'number' ? call.priority : undefined,
        deadlineMs: typeof call.deadlineMs === 'number' ? call.deadlineMs : undefined,
      })
    } catch (e) {
      throw toError(e)
    }
    if (typeof r.kind === 'string') return notGo(r)
    return this._go(this._native.adoptPermit(r))
  }

  /** A go decision for the permit handle `handle`. */
  _go(handle) {
    const permit = new Permit(this, this._native, handle)
    track(permit)
    return { kind: 'go', permit }
  }

  /**
   * Settles an admitted call with its outcome ({ status, usage, latencyMs, failure, headers,
   * contentDelivered, sent }): { kind: 'done', settlement } | { kind: 'retry', afterMs, target,
   * attempt, settlement } | { kind: 'give_up', error: GaveUpError, settlement }.
   */
  settle(permit, outcome = {}) {
    if (!(permit instanceof Permit) || permit._owner !== this) {
      throw new TypeError('settle() takes a permit this engine admitted')
    }
    if (permit._done) {
      throw new InvalidRequestError({
        kind: 'invalid_argument',
        code: 'invalid_argument',
        message: 'this permit was already settled or released',
      })
    }
    untrack(permit)
    io[ENGINE] = this._index
    io[PERMIT] = permit._handle
    const status = outcome.status
    io[STATUS] = typeof status === 'number' ? status : 0
    const usage = outcome.usage
    if (usage) usageNumbers(usage)
    else io[USAGE_PROMPT] = -1
    io[LATENCY_MS] = num(outcome.latencyMs, -1)
    io[FLAGS] = (outcome.sent === false ? 0 : FLAG_SENT) | (outcome.contentDelivered ? FLAG_CONTENT_DELIVERED : 0)
    let r
    try {
      r =
        outcome.failure || outcome.headers
          ? native.settle(outcome.failure, flatHeaders(outcome.headers))
          : native.settleFast()
    } catch (e) {
      // Refused before settling (an unknown failure code): the permit still holds its capacity.
      if (this._native.permitInfo(permit._handle) !== null) {
        permit._done = false
        track(permit)
      }
      throw toError(e)
    }
    if (r === 0) {
      const input = io[OUT_COST_INPUT]
      return {
        kind: 'done',
        settlement: {
          reservedTokens: io[OUT_RESERVED],
          tokens: io[OUT_TOKENS],
          spend: io[OUT_SPEND],
          usage: usage ?? null,
          cost: Number.isNaN(input)
            ? null
            : {
                input,
                cachedInput: io[OUT_COST_CACHED],
                output: io[OUT_COST_OUTPUT],
                total: input + io[OUT_COST_CACHED] + io[OUT_COST_OUTPUT],
              },
        },
      }
    }
    if (r.kind === 'retry') {
      return {
        kind: 'retry',
        afterMs: r.afterMs,
        target: r.target ?? null,
        attempt: new Attempt(r.attempt, r.afterMs, r.target ?? null),
        settlement: r.settlement,
      }
    }
    return { kind: 'give_up', error: toError(r.reason), settlement: r.settlement }
  }

  /**
   * Sends a chat request through the whole pipeline (cache, budgets, auth, retries, fallback,
   * accounting). Options: signal, deadline (ms), tenant, route, upstream, priority, cache.
   */
  async send(request, options = {}) {
    const { signal } = options
    if (signal?.aborted) throw abortError(signal)
    const id = callId()
    let promise
    try {
      this._native.sendQueued(id, bodyText(request), callOptions(options), signal != null)
      promise = new Promise((resolve, reject) => {
        if (this._waiting.size === 0) this._native.refAnswers(true)
        this._waiting.set(id, { resolve, reject })
      })
    } catch (e) {
      throw toError(e)
    }
    const onAbort = signal ? () => this._native.cancel(id) : null
    if (signal) signal.addEventListener('abort', onAbort, { once: true })
    try {
      return new ChatResponse(await promise)
    } catch (e) {
      throw toError(e, signal)
    } finally {
      if (signal) signal.removeEventListener('abort', onAbort)
    }
  }

  /**
   * Starts a streamed chat request; resolves once an upstream accepted it (or the cache
   * answered) to a ChatStream. Options as for send, plus raw.
   */
  async stream(request, options = {}) {
    const { signal } = options
    if (signal?.aborted) throw abortError(signal)
    const id = callId()
    let promise
    try {
      promise = this._native.stream(id, bodyText(request), callOptions(options))
    } catch (e) {
      throw toError(e)
    }
    const onAbort = signal ? () => this._native.cancel(id) : null
    if (signal) signal.addEventListener('abort', onAbort, { once: true })
    let stream
    try {
      stream = await promise
    } catch (e) {
      throw toError(e, signal)
    } finally {
      if (signal) signal.removeEventListener('abort', onAbort)
    }
    if (signal?.aborted) {
      await stream.cancel()
      throw abortError(signal)
    }
    return new ChatStream(stream, signal, options.raw === true)
  }

  /** The context window of `model` in the running policy's model table; null when unknown. */
  contextWindow(model) {
    return this._native.contextWindow(String(model))
  }

  /**
   * The tokens of `text` for `model` with the running policy's model table: { tokens, exact }
   * (exact false: an estimate). InvalidRequestError (code `unknown_model`) for a model the table
   * does not know.
   */
  countTokens(model, text) {
    checkStrings(model, text)
    try {
      return this._native.countTokens(model, text)
    } catch (e) {
      throw toError(e)
    }
  }

  /** The prompt tokens of a chat request as admission counts them (what the upstream bills): { tokens, exact }. */
  countRequest(request) {
    try {
      return this._native.countRequest(bodyText(request))
    } catch (e) {
      throw toError(e)
    }
  }

  /** `splitText` with the running policy's model table (its [models] encodings and windows). */
  splitText(model, text, maxTokens, options = {}) {
    checkStrings(model, text)
    try {
      return this._native.splitText(model, text, nonNegativeInt('maxTokens', maxTokens), nonNegativeInt('overlap', options?.overlap ?? 0))
    } catch (e) {
      throw toError(e)
    }
  }

  /**
   * Fits a conversation into `window - reserved` prompt tokens, counted as admission counts
   * the request: the system message and the new user message are always kept, then the newest
   * history messages that fit. `history` is [{ role, text }], oldest first. Returns { messages,
   * promptTokens, kept, dropped, exact }; throws TooLongError (needed, budget) when the system
   * and user messages alone do not fit.
   */
  trimConversation({ model, system, history = [], user, window, reserved }) {
    try {
      return this._native.trimConversation(
        model,
        system || undefined,
        history.map((m) => ({ role: m.role, text: m.text })),
        user,
        window,
        reserved,
      )
    } catch (e) {
      throw toError(e)
    }
  }

  /**
   * A message store in the policy's [redis] (Keyv-like: get(id), set(id, message)), each
   * message kept `ttlMs` (default 30 days); null when the policy has no [redis].
   */
  redisMessageStore(options = {}) {
    let store
    try {
      store = this._native.redisMessageStore(options.ttlMs ?? undefined)
    } catch (e) {
      throw toError(e)
    }
    return store === null ? null : new RedisMessageStore(store)
  }

  /** The metrics in the Prometheus text exposition format. */
  metrics() {
    return this._native.metrics()
  }

  /** Budget and cache counters: { generation, budgets: [...], cache: {...} }. */
  stats() {
    return this._native.stats()
  }

  /** Calls in flight through send/stream (before a stream's head arrives). */
  get inFlight() {
    return this._native.inFlight
  }

  /**
   * A WHATWG fetch that sends chat completions through this engine (for `new OpenAI({ fetch })`);
   * see createFetch.
   */
  get fetch() {
    if (this._fetch === null) this._fetch = createFetch(this)
    return this._fetch
  }
}

/**
 * Conversation messages in the policy's Redis (from `tollgate.redisMessageStore()`), for
 * ChatGPTAPI's `messageStore` or any host: Keyv's `get(id)` / `set(id, message)`. Messages
 * are kept in the chatgpt package's shape { id, role, text, parentMessageId, conversationId };
 * other fields are not stored.
 */
class RedisMessageStore {
  constructor(store) {
    this._store = store
  }

  /** The message with this id, or undefined (as Keyv answers) when there is none. */
  async get(id) {
    try {
      return (await this._store.get(String(id))) ?? undefined
    } catch (e) {
      throw toError(e)
    }
  }

  /** Stores `message` under `id` (its own id); the store's TTL applies (Keyv's `ttl` argument is not used). */
  async set(id, message) {
    if (message === null || typeof message !== 'object') {
      throw new TypeError('set(id, message) takes a message object { id, role, text, parentMessageId, conversationId }')
    }
    try {
      await this._store.set(String(id), {
        id: String(message.id),
        role: String(message.role),
        text: String(message.text ?? ''),
        parentMessageId: message.parentMessageId ?? undefined,
        conversationId: message.conversationId ?? undefined,
      })
    } catch (e) {
      throw toError(e)
    }
    return true
  }
}

// ---------------------------------------------------------------------------------------------
// fetch for the openai package

const CHAT = /\/chat\/completions\/?(?:\?.*)?$/
const HOP = new Set(['content-length', 'content-encoding', 'transfer-encoding', 'connection', 'keep-alive'])

function errorStatus(e) {
  switch (e.kind) {
    case 'denied':
      return 429
    case 'gave_up':
      return e.httpStatus ?? 502
    case 'deadline':
      return 504
    case 'invalid_request':
    case 'invalid_argument':
      return 400
    case 'auth':
      return 401
    case 'transport':
    case 'shared':
    case 'stream_cut':
      return 502
    default:
      return 500
  }
}

/** An HTTP error response the openai package turns into its own error class. */
function errorResponse(e) {
  const status = errorStatus(e)
  const headers = { 'content-type': 'application/json', 'x-should-retry': 'false', 'x-tollgate-error': e.code }
  if (e.retryAfterMs != null) {
    headers['retry-after-ms'] = String(Math.ceil(e.retryAfterMs))
    headers['retry-after'] = String(Math.ceil(e.retryAfterMs / 1000))
  }
  if (e.kind === 'gave_up' && e.body) return new Response(e.body, { status, headers })
  const error = {
    message: e.message,
    type: e.kind === 'denied' ? 'tollgate_denied' : `tollgate_${e.kind}`,
    code: e.code,
    param: null,
  }
  if (e.budget != null) error.budget = e.budget
  if (e.retryAfterMs != null) error.retry_after_ms = e.retryAfterMs
  return new Response(JSON.stringify({ error }), { status, headers })
}

function responseHeaders(from, extra) {
  const out = new Headers()
  for (const [name, value] of Object.entries(from ?? {})) {
    if (!HOP.has(name)) out.set(name, value)
  }
  for (const [name, value] of Object.entries(extra)) out.set(name, value)
  return out
}

async function requestBody(input, init) {
  const body = init.body ?? (input instanceof Request ? await input.text() : undefined)
  if (typeof body === 'string') return body
  if (body instanceof Uint8Array || body instanceof ArrayBuffer) return new TextDecoder().decode(body)
  return null
}

/**
 * A WHATWG fetch for the openai package (or anything that POSTs chat completions): requests to
 * .../chat/completions go through tollgate (send, or stream when `stream: true`), everything
 * else falls through to `options.fetch` (default: the global fetch). The tenant comes from the
 * `x-tollgate-tenant` request header, else `options.tenant` (a string, or a function of the body
 * and headers). Tollgate errors become HTTP errors with `x-should-retry: false` (tollgate
 * already retried): a denial is a 429 whose error names the budget (openai: RateLimitError).
 */
function createFetch(tollgate, options = {}) {
  const baseFetch = options.fetch ?? ((...args) => globalThis.fetch(...args))
  return async function tollgateFetch(input, init = {}) {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url
    const method = (init.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase()
    if (method !== 'POST' || !CHAT.test(url)) return baseFetch(input, init)
    const text = await requestBody(input, init)
    if (text === null) return baseFetch(input, init)
    const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined))
    let body
    try {
      body = JSON.parse(text)
    } catch {
      return errorResponse(
        new InvalidRequestError({ kind: 'invalid_request', code: 'invalid_request', message: 'the body is not JSON' }),
      )
    }
    const tenant =
      headers.get('x-tollgate-tenant') ??
      (typeof options.tenant === 'function' ? options.tenant(body, headers) : options.tenant)
    const callOpts = {
      signal: init.signal ?? undefined,
      tenant: tenant ?? undefined,
      route: headers.get('x-tollgate-route') ?? options.route,
      upstream: headers.get('x-tollgate-upstream') ?? options.upstream,
      priority: options.priority,
      deadline: options.deadline,
      cache: headers.get('x-tollgate-cache') ?? options.cache,
    }
    try {
      if (body.stream === true) {
        const stream = await tollgate.stream(text, { ...callOpts, raw: true })
        const encoder = new TextEncoder()
        const sse = new ReadableStream({
          async pull(controller) {
            try {
              const { value, done } = await stream.next()
              if (done) {
                controller.close()
                return
              }
              let block = ''
              if (value.event) block += `event: ${value.event}\n`
              if (value.id) block += `id: ${value.id}\n`
              block += `data: ${value.data.replaceAll('\n', '\ndata: ')}\n\n`
              controller.enqueue(encoder.encode(block))
            } catch (e) {
              controller.error(e)
            }
          },
          cancel() {
            return stream.cancel()
          },
        })
        return new Response(sse, {
          status: stream.status,
          headers: responseHeaders(stream.headers, {
            'content-type': 'text/event-stream',
            'x-tollgate-source': stream.source,
          }),
        })
      }
      const r = await tollgate.send(text, callOpts)
      return new Response(r.bodyText, {
        status: r.status,
        headers: responseHeaders(r.headers, {
          'content-type': 'application/json',
          'x-tollgate-source': r.source,
        }),
      })
    } catch (e) {
      if (e?.name === 'AbortError' || !(e instanceof TollgateError)) throw e
      return errorResponse(e)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Splitting long texts

/** A non-negative integer argument, else a TypeError naming it. */
function nonNegativeInt(name, value) {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new TypeError(`${name} must be a non-negative integer, got ${String(value)}`)
  }
  return value
}

/**
 * Splits `text` into chunks of at most `maxTokens` tokens of `model` (the bundled model table),
 * cut between paragraphs, else sentences, else words: [{ text, tokens, exact, start, end,
 * overlap }], with `start`/`end`/`overlap` in UTF-16 units (`text.slice(start, end)` is the
 * chunk). Options: overlap (tokens of the previous chunk's end each chunk starts with; 0).
 * Throws InvalidRequestError (code `zero_max`, `overlap_too_large`, `exceeds_context_window`,
 * `unknown_model`, `empty`, `char_too_large`) for bad input, TypeError for wrong types.
 */
function checkStrings(model, text) {
  if (typeof model !== 'string') throw new TypeError(`model must be a string, got ${typeof model}`)
  if (typeof text !== 'string') throw new TypeError(`text must be a string, got ${typeof text}`)
}

/**
 * The tokens of `text` for `model` (the bundled model table): { tokens, exact }. Throws
 * InvalidRequestError (code `unknown_model`) for a model the table does not know.
 */
function countTokens(model, text) {
  checkStrings(model, text)
  try {
    return native.countTokens(model, text)
  } catch (e) {
    throw toError(e)
  }
}

function splitText(model, text, maxTokens, options = {}) {
  checkStrings(model, text)
  const overlap = options?.overlap ?? 0
  try {
    return native.splitText(model, text, nonNegativeInt('maxTokens', maxTokens), nonNegativeInt('overlap', overlap))
  } catch (e) {
    throw toError(e)
  }
}

module.exports = {
  splitText,
  countTokens,
  Tollgate,
  Permit,
  Attempt,
  ChatResponse,
  ChatStream,
  PolicyWatcher,
  createFetch,
  TollgateError,
  DeniedError,
  GaveUpError,
  DeadlineError,
  InvalidRequestError,
  NoUpstreamError,
  AuthError,
  TransportError,
  StreamCutError,
  PolicyError,
  AbortError,
  TooLongError,
  UnknownParentError,
  MessageStoreError,
  RedisMessageStore,
  version: native.version(),
}

// The chatgpt package's ChatGPTAPI over this engine (chatgpt.js requires this module, complete
// by now). Assigned one by one so that ES module imports see the names.
const chatgpt = require('./chatgpt.js')
module.exports.ChatGPTAPI = chatgpt.ChatGPTAPI
module.exports.MemoryMessageStore = chatgpt.MemoryMessageStore
