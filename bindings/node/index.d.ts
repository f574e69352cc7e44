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

// ----------------------------------------------------------------------------------------------
// Test upstream

/** The binding's version. */
export const version: string
