// The chatgpt package's ChatGPTAPI, on tollgate: the README example of `chatgpt`, with a policy
// instead of an API key.
//
//   bash bindings/node/run.sh            # once: installs and builds the binding
//   node examples/node/chatgpt.mjs
//
// This example runs against tollgate's test upstream on loopback, so it needs no API key; for
// the real service put `base_url = "https://api.openai.com/v1"` and
// `auth = { kind = "bearer", keys = ["env:OPENAI_API_KEY"] }` under [[upstream]].
import { ChatGPTAPI, Tollgate, TooLongError } from '../../bindings/node/index.js'
import { TestUpstream } from '../../bindings/node/testkit/index.js'

const upstream = TestUpstream.start({ latencyMs: 5 })
const api = new ChatGPTAPI({
  tollgate: new Tollgate(`
version = 1
[[upstream]]
name = "openai"
base_url = "${upstream.baseUrl}"
[[budget]]
name = "per-tenant"
scope = ["tenant"]
tokens_per_minute = 100000
`),
  completionParams: { model: 'gpt-4o', temperature: 0.5 },
  systemMessage: 'You are a helpful assistant.',
  maxModelTokens: 220, // small, to show the history being cut
  maxResponseTokens: 60,
  tenant: 'acme',
})

const res = await api.sendMessage('Hello World!')
console.log(res.text)

// Continue the conversation: pass the previous answer's id.
const res2 = await api.sendMessage('Can you expand on that?', { parentMessageId: res.id })
console.log(res2.text)

// Stream: onProgress gets the answer so far on every content event.
let progress = 0
const res3 = await api.sendMessage('Write a poem about cats', {
  parentMessageId: res2.id,
  onProgress: () => progress++,
})
console.log(`${progress} progress events; prompt ${res3.promptTokens} tokens, history ${res3.historyKept} kept, ${res3.historyDropped} dropped`)

// A message that alone does not fit is refused before sending, naming both numbers.
try {
  await api.sendMessage('word '.repeat(1000), { parentMessageId: res3.id })
} catch (e) {
  if (!(e instanceof TooLongError)) throw e
  console.log(`refused: needs ${e.needed} prompt tokens, the window leaves ${e.budget}`)
}
await upstream.close()
