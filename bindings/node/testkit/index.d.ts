// Types of the test upstream addon (testkit/index.js); not part of the published package.

export interface UpstreamOptions {
  latencyMs?: number
  latencyMaxMs?: number
  dripMs?: number
  words?: number
  maxWords?: number
  seed?: number
  eventIds?: boolean
  workerThreads?: number
}

export interface UpstreamMatch {
  model?: string
  tenant?: string
  path?: string
  stream?: boolean
  header?: [string, string]
}

export type UpstreamAction =
  | 'normal'
  | 'status_500'
  | 'status_503'
  | 'reset_mid_body'
  | 'malformed_json'
  | { kind: 'normal' | 'status_500' | 'status_503' | 'reset_mid_body' | 'malformed_json' }
  | { kind: 'latency' | 'slow_first_byte' | 'slow_drip'; ms: number }
  | { kind: 'status_429'; retryAfter?: number }
  | { kind: 'status'; status: number; shouldRetry?: boolean }
  | { kind: 'cut_stream_after'; n: number }
  | { kind: 'respond'; status: number; body?: string; headers?: Record<string, string> }

export interface Arrival {
  seq: number
  offsetMs: number
  path: string
  model?: string
  tenant?: string
  stream: boolean
  status?: number
  fault?: string
  body: string
}

/** tollgate's fault-injecting OpenAI-compatible upstream, on 127.0.0.1 in this process. */
export class TestUpstream {
  private constructor()
  static start(options?: UpstreamOptions): TestUpstream
  readonly baseUrl: string
  readonly requests: number
  script(match: UpstreamMatch, actions: UpstreamAction[]): void
  scriptRemaining(): number
  countStatus(status: number): number
  log(): Arrival[]
  clearLog(): void
  close(): Promise<void>
}
