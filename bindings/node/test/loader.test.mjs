// native.js finds the addon where napi-rs puts it, and says what it looked for when it is not
// there (a platform without a prebuilt binary).
import assert from 'node:assert/strict'
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

const here = dirname(dirname(fileURLToPath(import.meta.url)))
const require = createRequire(import.meta.url)

test('the addon is tollgate.<platform>.node beside index.js', () => {
  const { platformTriple } = require('../platform.js')
  assert.match(platformTriple(), /^[a-z0-9]+-[a-z0-9]+(-(gnu|musl|msvc))?$/)
  const native = require('../native.js')
  assert.equal(typeof native.NativeEngine, 'function')
})

test('without a binary for the platform, loading names the files it looked for', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-loader-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  for (const f of ['native.js', 'platform.js']) copyFileSync(join(here, f), join(dir, f))
  const saved = process.env.TOLLGATE_NATIVE_PATH
  delete process.env.TOLLGATE_NATIVE_PATH
  try {
    const { platformTriple } = require('../platform.js')
    assert.throws(
      () => createRequire(join(dir, 'x.js'))('./native.js'),
      (e) =>
        e.message.includes(`no native addon for ${platformTriple()}`) &&
        e.message.includes(join(dir, `tollgate.${platformTriple()}.node`)) &&
        e.message.includes(`tollgate-${platformTriple()}`),
    )
  } finally {
    if (saved !== undefined) process.env.TOLLGATE_NATIVE_PATH = saved
  }
})
