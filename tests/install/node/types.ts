// Compiled with `tsc --noEmit` against the installed package's index.d.ts: the types cover what
// the README shows.
import { Tollgate, DeniedError, TollgateError, type Verdict } from 'tollgate'

export async function use(base: string): Promise<number> {
  const tg = new Tollgate(`version = 1
[[upstream]]
name = "test"
base_url = "${base}"
`)
  const d = tg.admit({ model: 'gpt-4o-mini', tenant: 'acme', promptTokens: 12, maxTokens: 100 })
  if (d.kind === 'go') {
    const v: Verdict = tg.settle(d.permit, { status: 200 })
    if (v.kind === 'retry') return v.afterMs
  } else if (d.kind === 'deny') {
    const e: TollgateError = d.error
    return e instanceof DeniedError ? (e.retryAfterMs ?? 0) : 0
  }
  const r = await tg.send(
    { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] },
    { tenant: 'acme', signal: AbortSignal.timeout(1000), deadline: 500 },
  )
  const text: string = r.content ?? ''
  for await (const chunk of await tg.stream({ model: 'gpt-4o-mini', messages: [] }, { tenant: 'acme' })) {
    void chunk
  }
  return text.length + tg.generation
}
