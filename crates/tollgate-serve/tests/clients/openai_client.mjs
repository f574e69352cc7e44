// The official `openai` npm package as a client of `tollgate serve`.
//
// Run by tests/serve_clients.rs against a proxy in front of the testkit upstream; the same
// scenarios as openai_client.py. Prints one line per check, `ok <name>` or `FAIL <name>: why`,
// and exits 1 if any check failed.
//
// Environment (set by the harness):
//   TOLLGATE_BASE_URL     the proxy's OpenAI base URL, http://127.0.0.1:<port>/v1
//   TOLLGATE_KEY          virtual key of a tenant with a roomy budget
//   TOLLGATE_TINY_KEY     virtual key of a tenant whose budget allows only a few calls
//   TOLLGATE_TINY_BUDGET  the name of that budget, as the 429 must name it
//   TOLLGATE_RETRY_USER   the `user` for which the upstream answers 503 once
//   TOLLGATE_QUOTA_USER   the `user` for which the upstream answers 429 insufficient_quota
//   TOLLGATE_MODEL        the model to ask for
//
// Reload handshake: once the tiny tenant is refused, the script prints WAITING_FOR_RELOAD and
// reads one line from stdin; the harness raises the limit, then writes `reloaded`.

import readline from 'node:readline';
import OpenAI from 'openai';

const TIMEOUT_MS = 20_000;
// Bounded: the tiny tenant is refused within this many calls or the check fails.
const MAX_CALLS_UNTIL_DENIED = 6;

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const BASE_URL = env('TOLLGATE_BASE_URL');
const KEY = env('TOLLGATE_KEY');
const TINY_KEY = env('TOLLGATE_TINY_KEY');
const TINY_BUDGET = env('TOLLGATE_TINY_BUDGET');
const RETRY_USER = env('TOLLGATE_RETRY_USER');
const QUOTA_USER = env('TOLLGATE_QUOTA_USER');
const MODEL = process.env.TOLLGATE_MODEL || 'gpt-4o';

const failures = [];

async function check(name, fn) {
  try {
    await fn();
  } catch (e) {
    failures.push(name);
    const why = `${e?.constructor?.name ?? 'Error'}: ${e?.message ?? e}`.replace(/\n/g, ' ');
    console.log(`FAIL ${name}: ${why}`);
    return false;
  }
  console.log(`ok ${name}`);
  return true;
}

function expect(cond, why) {
  if (!cond) throw new Error(why);
}

const client = (apiKey = KEY, maxRetries = 0) =>
  new OpenAI({ baseURL: BASE_URL, apiKey, maxRetries, timeout: TIMEOUT_MS });

const ask = (content, extra = {}) => ({
  model: MODEL,
  max_tokens: 5,
  messages: [{ role: 'user', content }],
  ...extra,
});

async function plain() {
  const c = await client().chat.completions.create(ask('node: plain'));
  expect(c.object === 'chat.completion', `object ${c.object}`);
  const text = c.choices[0].message.content;
  expect(typeof text === 'string' && text.trim(), `empty content ${JSON.stringify(text)}`);
  expect(c.usage, 'no usage');
  expect(c.usage.completion_tokens > 0, `usage ${JSON.stringify(c.usage)}`);
  expect(
    c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens,
    `usage ${JSON.stringify(c.usage)}`,
  );
}

async function streamed() {
  const stream = await client().chat.completions.create(
    ask('node: stream', { stream: true, stream_options: { include_usage: true } }),
  );
  let chunks = 0;
  let finish = null;
  let usage = null;
  const parts = [];
  // The SDK ends the iteration at `data: [DONE]`; a [DONE] it could not handle would throw.
  for await (const chunk of stream) {
    chunks += 1;
    expect(chunk.object === 'chat.completion.chunk', `object ${chunk.object}`);
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta?.content) parts.push(choice.delta.content);
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  const text = parts.join('');
  expect(chunks >= 3, `only ${chunks} chunks`);
  expect(parts.length >= 2, `content in ${parts.length} chunks: ${JSON.stringify(text)}`);
  expect(text.trim(), 'no content assembled');
  expect(finish, 'no finish_reason');
  expect(usage && usage.completion_tokens > 0, `usage ${JSON.stringify(usage)}`);
}

async function deniedThenReloaded() {
  // Default SDK retries (2): the proxy's `x-should-retry: false` must stop the SDK from
  // retrying (or waiting out Retry-After) on its own.
  const tiny = client(TINY_KEY, 2);
  let err = null;
  let allowed = 0;
  let took = 0;
  for (let i = 0; i < MAX_CALLS_UNTIL_DENIED; i++) {
    const started = performance.now();
    try {
      await tiny.chat.completions.create(ask(`node: tiny ${i}`));
      allowed += 1;
    } catch (e) {
      if (!(e instanceof OpenAI.RateLimitError)) throw e;
      err = e;
      took = (performance.now() - started) / 1000;
      break;
    }
  }
  expect(err, `no RateLimitError after ${allowed} calls`);
  expect(allowed >= 1, 'the tiny tenant was refused before any call went through');
  expect(err.status === 429, `status ${err.status}`);
  const retryAfter = err.headers?.get('retry-after');
  expect(retryAfter != null, 'no retry-after header');
  expect(Number.parseInt(retryAfter, 10) >= 1, `retry-after ${retryAfter}`);
  const body = err.error ?? {};
  expect(body.budget === TINY_BUDGET, `error body ${JSON.stringify(err.error)}`);
  expect(body.code === 'budget_exhausted', `error body ${JSON.stringify(err.error)}`);
  expect(body.type === 'rate_limit_exceeded', `error body ${JSON.stringify(err.error)}`);
  expect(took < 5, `the SDK took ${took.toFixed(1)}s: it retried a 429 marked x-should-retry: false`);
  return tiny;
}

/** One line from stdin, or null at its end. */
function readLine() {
  return new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin });
    let done = false;
    rl.once('line', (line) => {
      done = true;
      rl.close();
      resolve(line);
    });
    rl.once('close', () => {
      if (!done) resolve(null);
    });
  });
}

async function afterReload(tiny) {
  console.log('WAITING_FOR_RELOAD');
  const line = await readLine();
  process.stdin.destroy();
  expect(line?.trim() === 'reloaded', `harness said ${JSON.stringify(line)}`);
  for (let i = 0; i < 3; i++) {
    const c = await tiny.chat.completions.create(ask(`node: after reload ${i}`));
    expect(c.choices[0].message.content, 'empty content');
  }
}

async function retried503() {
  // maxRetries 0: only the proxy can have retried the upstream's 503.
  const { data, response } = await client(KEY, 0)
    .chat.completions.create(ask('node: retried', { user: RETRY_USER }))
    .withResponse();
  expect(response.status === 200, `status ${response.status}`);
  const attempts = response.headers.get('x-tollgate-attempts');
  expect(attempts === '2', `x-tollgate-attempts ${attempts} (want the 503 and its retry)`);
  expect(data.choices[0].message.content, 'empty content');
}

async function quotaNotRetried() {
  // Default SDK retries (2): the upstream's 429 insufficient_quota is one no retry can fix;
  // the proxy sends it once and tells the SDK not to retry it either.
  const started = Date.now();
  try {
    await client(KEY, 2).chat.completions.create(ask('node: quota', { user: QUOTA_USER }));
  } catch (e) {
    if (!(e instanceof OpenAI.RateLimitError)) throw e;
    const took = (Date.now() - started) / 1000;
    expect(e.status === 429, `status ${e.status}`);
    expect(e.code === 'insufficient_quota', `code ${e.code}`);
    expect(e.headers?.get?.('x-should-retry') === 'false' || e.headers?.['x-should-retry'] === 'false',
      'no x-should-retry: false');
    expect(took < 5, `the SDK took ${took}s: it retried`);
    return;
  }
  throw new Error('the call went through');
}

async function cacheHit() {
  const c = client();
  const req = ask('node: cache me', { temperature: 0 });
  const first = await c.chat.completions.create(req).withResponse();
  const second = await c.chat.completions.create(req).withResponse();
  const s1 = first.response.headers.get('x-tollgate-source');
  const s2 = second.response.headers.get('x-tollgate-source');
  expect(s1 === 'upstream', `first x-tollgate-source ${s1}`);
  expect(s2 === 'cache', `second x-tollgate-source ${s2}`);
  expect(first.data.id === second.data.id, `ids ${first.data.id} and ${second.data.id}`);
  expect(
    first.data.choices[0].message.content === second.data.choices[0].message.content,
    'content differs',
  );
}

async function invalidKey() {
  try {
    await client('vk-nobody-knows-this').chat.completions.create(ask('node: bad key'));
  } catch (e) {
    if (!(e instanceof OpenAI.AuthenticationError)) throw e;
    expect(e.status === 401, `status ${e.status}`);
    expect(e.code === 'invalid_api_key', `code ${e.code}`);
    return;
  }
  throw new Error('the call went through');
}

async function main() {
  const { VERSION } = await import('openai/version');
  console.log(`openai ${VERSION} (node ${process.versions.node}) against ${BASE_URL}`);
  await check('plain completion', plain);
  await check('streamed completion', streamed);
  let tiny = null;
  if (await check('budget denial is a RateLimitError', async () => { tiny = await deniedThenReloaded(); })) {
    await check('reload raised the limit', () => afterReload(tiny));
  } else {
    failures.push('reload');
    console.log('FAIL reload raised the limit: skipped, the denial check failed');
  }
  await check('503 retried by the proxy, invisible to the client', retried503);
  await check('cache hit', cacheHit);
  await check('invalid virtual key is an AuthenticationError', invalidKey);
  // Last: the quota error holds the upstream's only key, so later calls would be refused.
  await check('insufficient_quota is not retried, by the proxy or the SDK', quotaNotRetried);
  console.log(failures.length ? `${failures.length} failed` : 'all passed');
  return failures.length ? 1 : 0;
}

process.exitCode = await main();
