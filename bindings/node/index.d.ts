// Type declarations of tollgate for Node.js (hand-written; checked by `npm run typecheck`).

/** Token usage. */
export interface Usage {
  promptTokens: number
  completionTokens: number
  totalTokens: number
  cachedPromptTokens: number
  reasoningTokens: number
}

/** Usage as a host reports it: tollgate's names or the OpenAI response's `usage` object. */
export type UsageInput =
  | Partial<Usage>
  | {
      prompt_tokens?: number
      completion_tokens?: number
      total_tokens?: number
      prompt_tokens_details?: { cached_tokens?: number }
      completion_tokens_details?: { reasoning_tokens?: number }
    }

/** A cost split by kind, in the currency of the price table. */
export interface Cost {
  input: number
  cachedInput: number
  output: number
  total: number
}

/** What a settled call was charged. */
export interface Settlement {
  reservedTokens: number
  tokens: number
  spend: number
  usage: Usage | UsageInput | null
  cost: Cost | null
}

/** Where an attempt went (routed calls). */
export interface Target {
  route: string
  upstream: string
  model: string
  key: string
}

/** One finished attempt of a call. */
export interface AttemptRecord {
  number: number
  target?: Target
  outcome: string
  decision: string
}

/** Budget counters. */
export interface BudgetStats {
  name: string
  admitted: number
  waited: number
  denied: number
  tokens: number
  spend: number
  keys: number
}

/** Cache counters. */
export interface CacheStats {
  hits: number
  misses: number
  staleHits: number
  inserts: number
  refused: number
  evictions: number
  expired: number
  bytes: number
  entries: number
}

/** What `stats()` reports. */
export interface Stats {
  generation: number
  budgets: BudgetStats[]
  cache: CacheStats
}

/** What a reload changed. */
export interface ReloadReport {
  generation: number
  added: string[]
  kept: string[]
  removed: string[]
  rescoped: string[]
}

/** Policy text (TOML or JSON), `{ text }` or `{ path }`. */
export type PolicySource = string | { text: string } | { path: string }

// ----------------------------------------------------------------------------------------------
// Errors

/** Every error tollgate raises; `code` is the stable code of the Rust API. */
export class TollgateError extends Error {
  /** The error class: denied, gave_up, deadline, invalid_request, no_upstream, auth, ... */
  readonly kind: string
  readonly code: string
}
/** A budget refused the call; `code` is the reason (budget_exhausted, concurrency, ...). */
export class DeniedError extends TollgateError {
  readonly budget: string | null
  readonly key: string | null
  readonly limit: string | null
  readonly retryAfterMs: number | null
}
/** The call failed and was not retried further; `code` is why (attempts_exhausted, ...). */
export class GaveUpError extends TollgateError {
  readonly httpStatus: number | null
  readonly body: string | null
  readonly history: AttemptRecord[]
}
/** The call's deadline passed. */
export class DeadlineError extends TollgateError {}
/** The request is not a chat request tollgate can send (or an argument is wrong). */
export class InvalidRequestError extends TollgateError {}
/** Nothing in the policy says where the call goes. */
export class NoUpstreamError extends TollgateError {}
/** The credentials could not be read or obtained. */
export class AuthError extends TollgateError {}
/** The transport could not be set up, or the identical call this one waited for failed. */
export class TransportError extends TollgateError {}
/** A stream broke off after content reached the caller; not retried. */
export class StreamCutError extends TollgateError {
  readonly settlement: Settlement | null
}
/** A refused policy, with every problem. */
export class PolicyError extends TollgateError {
  readonly problems: string[]
}
/** The call was cancelled through its AbortSignal (`name` is 'AbortError'; `cause` the reason). */
export class AbortError extends TollgateError {}
/**
 * A conversation does not fit its window (code 'too_long'): the system message and the new user
 * message alone need `needed` prompt tokens, more than the `budget` (`window - reserved`).
 * Nothing was sent.
 */
export class TooLongError extends TollgateError {
  readonly needed: number
  readonly budget: number
  readonly window: number
  readonly reserved: number
}
/** A parent message id not in the message store (code 'unknown_parent'); nothing was sent. */
export class UnknownParentError extends TollgateError {
  readonly parentMessageId: string
}
/** A message store failed (code 'message_store'); `cause` is the store's own error. */
export class MessageStoreError extends TollgateError {}

// ----------------------------------------------------------------------------------------------
// Decide API

/** A call to admit. */
export interface CallInput {
  model: string
  tenant?: string
  upstream?: string
  key?: string
  route?: string
  priority?: number
  /** Prompt tokens counted by the host; else `prompt` text or the `request` body is counted. */
  promptTokens?: number
  prompt?: string
  request?: object | string
  /** Completion allowance; default: the request's max_tokens, else the policy's default. */
  maxTokens?: number
  /** Time the whole call (every attempt) may take. */
  deadlineMs?: number
  /** The state from a `retry` verdict, when this is a retry. */
  attempt?: Attempt
}

/** Capacity held by an admitted call. */
export class Permit {
  private constructor()
  /** What the permit holds (null once settled or released). */
  info(): {
    budgets: [string, string][]
    target?: Target
    attempt: number
    promptTokens: number
    completionAllowance: number
    reservedTokens: number
    exactPrompt: boolean
    estimatedCost: number
  } | null
  /** Gives the capacity back as if the call was not sent; false if already settled/released. */
  release(): boolean
  readonly settled: boolean
}

/** The state a retry carries. */
export class Attempt {
  private constructor()
  readonly afterMs: number
  readonly target: Target | null
}

export type Decision =
  | { kind: 'go'; permit: Permit }
  | {
      kind: 'wait'
      /** Ask again after this long. */
      afterMs: number
      /**
       * The budget without room, or '' when no budget made the call wait: every target of its
       * route is passed over for a known time (an open circuit breaker, a server's rate-limit
       * reset) that fits the policy's retry.max_retry_after (longer, and admit denies with
       * code 'unavailable').
       */
      budget: string
      /** The budget's scope key ('' for an unscoped budget or no budget). */
      key: string
      /** The exhausted limit; null for concurrency, a queue, or no budget. */
      limit: string | null
    }
  | { kind: 'deny'; error: DeniedError | InvalidRequestError }

/**
 * What ended an attempt without a usable response: tollgate's failure codes (the Rust API's
 * `Failure::code`, which attempt records' `outcome` also speaks). `status_NNN` is a status that
 * is not 2xx (`status_503`).
 */
export type FailureCode =
  | 'connect_refused'
  | 'connect_reset'
  | 'connect_dns'
  | 'connect_tls'
  | 'connect_other'
  | 'timeout_connect'
  | 'timeout_first_byte'
  | 'timeout_idle'
  | 'timeout_total'
  | 'malformed'
  | 'cut_stream'
  | `status_${number}`

/**
 * Short forms `settle` accepts too: `connect` (connect_other), `reset` (connect_reset), `dns`
 * (connect_dns), `tls` (connect_tls), `timeout` (timeout_total).
 */
export type FailureAlias = 'connect' | 'reset' | 'dns' | 'tls' | 'timeout'

/** What happened to an admitted call. */
export interface OutcomeInput {
  status?: number
  usage?: UsageInput
  latencyMs?: number
  /** The failure that ended the attempt, when one did (it wins over `status`); an unknown code
   * throws InvalidRequestError and leaves the permit unsettled. */
  failure?: FailureCode | FailureAlias
  headers?: Headers | Record<string, string | string[]> | [string, string][] | Map<string, string>
  contentDelivered?: boolean
  /** false: the request never left the host (everything is refunded). */
  sent?: boolean
}

export type Verdict =
  | { kind: 'done'; settlement: Settlement }
  | { kind: 'retry'; afterMs: number; target: Target | null; attempt: Attempt; settlement: Settlement }
  | { kind: 'give_up'; error: GaveUpError; settlement: Settlement }

// ----------------------------------------------------------------------------------------------
// Call API

export interface CallOptions {
  signal?: AbortSignal
  /** Time the whole call may take, in ms. */
  deadline?: number
  deadlineMs?: number
  tenant?: string
  route?: string
  upstream?: string
  priority?: number
  cache?: 'default' | 'force' | 'bypass'
}

export interface StreamOptions extends CallOptions {
  /** Yield the server-sent events themselves ({ event, data, id }, [DONE] included). */
  raw?: boolean
}

/** The answer of `send`. */
export class ChatResponse {
  private constructor()
  readonly status: number
  readonly headers: Record<string, string>
  /** The JSON body as received. */
  readonly bodyText: string
  /** The JSON body, parsed. */
  readonly body: any
  /** The first choice's message content. */
  readonly content: string | null
  readonly usage: Usage | null
  readonly settlement: Settlement | null
  readonly target: Target | null
  readonly attempts: number
  readonly history: AttemptRecord[]
  readonly source: 'upstream' | 'cache' | 'shared' | 'stale'
  readonly queuedMs: number
}

/** A server-sent event. */
export interface StreamEvent {
  event?: string
  data: string
  id?: string
}

/** A streamed answer: chunks as they arrive; usage and settlement after the loop. */
export class ChatStream<T = any> implements AsyncIterableIterator<T> {
  private constructor()
  readonly status: number
  readonly headers: Record<string, string>
  readonly source: 'upstream' | 'cache' | 'shared' | 'stale'
  readonly attempts: number
  readonly history: AttemptRecord[]
  readonly target: Target | null
  readonly queuedMs: number
  /** Set once the stream ended. */
  readonly usage: Usage | null
  readonly settlement: Settlement | null
  [Symbol.asyncIterator](): AsyncIterableIterator<T>
  next(): Promise<IteratorResult<T>>
  return(value?: unknown): Promise<IteratorResult<T>>
  throw(error?: unknown): Promise<IteratorResult<T>>
  /** Stops the stream; resolves once the connection is closed and the slot freed. */
  cancel(): Promise<void>
}

/** A running watch of a policy file. */
export class PolicyWatcher {
  private constructor()
  on(event: 'reload', listener: (report: ReloadReport) => void): this
  on(event: 'refused' | 'unreadable', listener: (error: PolicyError) => void): this
  once(event: 'reload', listener: (report: ReloadReport) => void): this
  once(event: 'refused' | 'unreadable', listener: (error: PolicyError) => void): this
  off(event: string, listener: (...args: any[]) => void): this
  close(): Promise<void>
}

export type Fetch = (input: string | URL | Request, init?: RequestInit) => Promise<Response>

export interface FetchOptions {
  /** Tenant of every call (the x-tollgate-tenant request header wins). */
  tenant?: string | ((body: any, headers: Headers) => string | undefined)
  route?: string
  upstream?: string
  priority?: number
  deadline?: number
  cache?: 'default' | 'force' | 'bypass'
  /** Where other requests go (default: the global fetch). */
  fetch?: Fetch
}

// ----------------------------------------------------------------------------------------------
// Conversations

/** One history message, oldest first. */
export interface Turn {
  role: 'user' | 'assistant' | 'system' | string
  text: string
}

/** What `trimConversation` is given. */
export interface TrimInput {
  model: string
  system?: string | null
  /** Oldest first. */
  history?: Turn[]
  /** The new user message. */
  user: string
  /** The context window (maxModelTokens). */
  window: number
  /** Tokens kept for the answer (maxResponseTokens). */
  reserved: number
}

/** The messages of a request that fits, and what was left out. */
export interface Trimmed {
  /** The system message (if any), the newest history that fits, the new user message. */
  messages: { role: string; content: string }[]
  /** Their prompt count, as admission counts the request. */
  promptTokens: number
  kept: number
  dropped: number
  /** false: the model has no BPE vocabulary and the count is an estimate. */
  exact: boolean
}

/** A stored conversation message, in the chatgpt package's shape. */
export interface ChatMessage {
  id: string
  role: 'user' | 'assistant' | 'system' | string
  text: string
  parentMessageId?: string
  conversationId?: string
  [extra: string]: unknown
}

/** Anything Keyv-like that keeps messages: the chatgpt package calls get(id) and set(id, message). */
export interface MessageStoreLike {
  get(id: string): Promise<ChatMessage | undefined | null> | ChatMessage | undefined | null
  set(id: string, message: ChatMessage, ttl?: number): Promise<unknown> | unknown
}

/** Messages in the policy's Redis ([redis]), from `tollgate.redisMessageStore()`. */
export class RedisMessageStore implements MessageStoreLike {
  private constructor()
  /** The message, or undefined when there is none (or it expired). MessageStoreError when Redis fails. */
  get(id: string): Promise<ChatMessage | undefined>
  /** Stores the message under its own id (`id` must be it); the store's TTL applies. */
  set(id: string, message: ChatMessage): Promise<true>
}

/** Messages in memory, least recently used dropped first past `maxSize` (default 10,000). */
export class MemoryMessageStore implements MessageStoreLike {
  constructor(options?: { maxSize?: number })
  readonly size: number
  get(id: string): Promise<ChatMessage | undefined>
  set(id: string, message: ChatMessage): Promise<true>
  delete(id: string): Promise<boolean>
  clear(): Promise<void>
}

/** Options of `new ChatGPTAPI(...)` (the chatgpt package's, for a policy). */
export interface ChatGPTAPIOptions {
  /** The engine the calls go through (or `policy`). */
  tollgate?: Tollgate
  /** Policy text, { text } or { path }: the class makes its own Tollgate. */
  policy?: PolicySource
  /** Default: completionParams.model. */
  model?: string
  /** Request fields sent with every message (temperature, top_p, ...). */
  completionParams?: Record<string, unknown>
  /** Sent first in every request (none by default). */
  systemMessage?: string
  /** Default: the model's context window from the policy's model table. */
  maxModelTokens?: number
  /** Tokens kept for the answer, sent as max_tokens (default 1000). */
  maxResponseTokens?: number
  /** Default: a MemoryMessageStore of 10,000 messages. */
  messageStore?: MessageStoreLike
  getMessageById?: (id: string) => Promise<ChatMessage | undefined | null> | ChatMessage | undefined | null
  upsertMessage?: (message: ChatMessage) => Promise<unknown> | unknown
  /** The tenant every call is made for. */
  tenant?: string
  /** Most history messages read back through parent links (default 1000). */
  maxHistory?: number
  /** Logs every request's count and trimming (console.debug). */
  debug?: boolean
  /** Not used with tollgate (the policy has them): passing one throws. */
  apiKey?: never
  apiBaseUrl?: never
  apiOrg?: never
  fetch?: never
}

/** Options of `sendMessage`. */
export interface SendMessageOptions {
  /** The answer this message follows; an id not in the store rejects with UnknownParentError. */
  parentMessageId?: string
  /** Default: the parent's conversation, else a new id. */
  conversationId?: string
  /** The user message's id (default: a new UUID). */
  messageId?: string
  /** Default: true when onProgress is given. */
  stream?: boolean
  /** Instead of the constructor's. */
  systemMessage?: string
  /** The whole call's deadline, in ms (DeadlineError). */
  timeoutMs?: number
  /** Called with the answer so far on every content event of the stream. */
  onProgress?: (partial: ChatGPTPartial) => void
  /** Cancels the call (AbortError). */
  abortSignal?: AbortSignal
  /** Merged over the constructor's. */
  completionParams?: Record<string, unknown>
  /** The tenant of this call (instead of the constructor's). */
  tenant?: string
  /** Not supported: passing it throws. */
  name?: never
}

/** The answer so far, as onProgress gets it. */
export interface ChatGPTPartial {
  id: string
  text: string
  role: 'assistant'
  /** What the last event added. */
  delta: string
  parentMessageId: string
  conversationId: string
}

/** The answer of `sendMessage`. */
export interface ChatGPTResponse {
  /** The answer's id (a new UUID): pass it as the next message's parentMessageId. */
  id: string
  text: string
  role: 'assistant'
  /** The user message's id. */
  parentMessageId: string
  conversationId: string
  /** The chat.completion (for a stream, assembled), with usage. */
  detail: any
  usage: Usage | null
  settlement: Settlement | null
  /** The prompt's count, as admission counted it (and the test upstream billed it). */
  promptTokens: number
  historyKept: number
  historyDropped: number
  /** Storing the messages failed after the call succeeded (the answer is still here). */
  storeError: MessageStoreError | null
}

/** The chatgpt package's ChatGPTAPI over tollgate. */
export class ChatGPTAPI {
  /** Throws InvalidRequestError for a bad option (and for apiKey, apiBaseUrl, apiOrg, fetch). */
  constructor(options: ChatGPTAPIOptions)
  readonly tollgate: Tollgate
  readonly model: string
  /** The context window the history is trimmed to. */
  readonly maxModelTokens: number
  /** Tokens kept for the answer, sent as max_tokens. */
  readonly maxResponseTokens: number
  sendMessage(text: string, options?: SendMessageOptions): Promise<ChatGPTResponse>
  getMessageById(id: string): Promise<ChatMessage | undefined | null>
  upsertMessage(message: ChatMessage): Promise<unknown>
}

/** The policy engine: budgets, token accounting, cache, retries, and the calls themselves. */
export class Tollgate {
  /** Throws PolicyError with every problem of a refused policy. */
  constructor(policy: PolicySource)
  readonly generation: number
  /** Calls in flight through send/stream (before a stream's head arrives). */
  readonly inFlight: number
  /** Replaces the policy; returns the new generation. Throws PolicyError (the old one stays). */
  reload(policy: PolicySource): number
  reloadReport(policy: PolicySource): ReloadReport
  watch(
    path: string,
    options?: {
      intervalMs?: number
      onReload?: (report: ReloadReport) => void
      onError?: (error: PolicyError) => void
    },
  ): PolicyWatcher
  admit(call: CallInput): Decision
  /** As admit, without blocking the event loop while budgets kept in Redis are asked. */
  admitAsync(call: CallInput): Promise<Decision>
  settle(permit: Permit, outcome?: OutcomeInput): Verdict
  send(request: object | string, options?: CallOptions): Promise<ChatResponse>
  stream(request: object | string, options: StreamOptions & { raw: true }): Promise<ChatStream<StreamEvent>>
  stream(request: object | string, options?: StreamOptions): Promise<ChatStream>
  /** The context window of `model` in the running policy's model table; null when unknown. */
  contextWindow(model: string): number | null
  /** The tokens of `text` for `model` with the running policy's model table. */
  countTokens(model: string, text: string): TokenCount
  /** The prompt tokens of a chat request as admission counts them: what the upstream bills. */
  countRequest(request: object | string): TokenCount
  /** `splitText` with the running policy's model table (its [models]). */
  splitText(model: string, text: string, maxTokens: number, options?: SplitOptions): Chunk[]
  /** Fits a conversation into window - reserved by admission's count; TooLongError when it cannot. */
  trimConversation(input: TrimInput): Trimmed
  /** Messages in the policy's [redis], each kept ttlMs (default 30 days); null without [redis]. */
  redisMessageStore(options?: { ttlMs?: number }): RedisMessageStore | null
  /** Prometheus text exposition. */
  metrics(): string
  stats(): Stats
  /** A fetch for `new OpenAI({ fetch })`: chat completions go through this engine. */
  readonly fetch: Fetch
}

/** A fetch that sends chat completions through `tollgate` and everything else to `options.fetch`. */
export function createFetch(tollgate: Tollgate, options?: FetchOptions): Fetch

// ----------------------------------------------------------------------------------------------
// Splitting long texts

/** One chunk of `splitText`. Offsets are UTF-16 code units: `text.slice(start, end)` is it. */
export interface Chunk {
  text: string
  /** The chunk's own token count, at most `maxTokens`. */
  tokens: number
  /** True when counted with the model's exact vocabulary; false for an estimate. */
  exact: boolean
  start: number
  end: number
  /** Units at the start repeated from the previous chunk: `chunk.text.slice(overlap)` is new. */
  overlap: number
}

export interface SplitOptions {
  /** Tokens of the previous chunk's end each chunk starts with (less than maxTokens; 0). */
  overlap?: number
}

/**
 * Splits `text` into chunks of at most `maxTokens` tokens of `model` (bundled model table), cut
 * between paragraphs, else sentences, else words. Without overlap the chunks' texts, joined, are
 * `text`. Throws InvalidRequestError (code `zero_max`, `overlap_too_large`,
 * `exceeds_context_window`, `unknown_model`, `empty`, `char_too_large`) for bad input.
 */
export function splitText(model: string, text: string, maxTokens: number, options?: SplitOptions): Chunk[]

/** A token count; `exact` is false when the model has no vocabulary and the count is an estimate. */
export interface TokenCount {
  tokens: number
  exact: boolean
}

/** The tokens of `text` for `model` (bundled model table); InvalidRequestError `unknown_model` for an unknown model. */
export function countTokens(model: string, text: string): TokenCount

// ----------------------------------------------------------------------------------------------
// Test upstream

/** The binding's version. */
export const version: string
