'use strict'
// Loads the native addon, the way napi-rs packages do: the prebuilt binary for this platform is
// `tollgate.<platform>-<arch>[-<abi>].node` beside this file (what the published package and
// `npm run build` provide), else the package `tollgate-<platform>-<arch>[-<abi>]` (where
// napi-rs puts per-platform binaries). TOLLGATE_NATIVE_PATH points at another build of it (for
// example a debug one).
const { existsSync } = require('node:fs')
const { join } = require('node:path')
const { platformTriple } = require('./platform.js')

function load() {
  if (process.env.TOLLGATE_NATIVE_PATH) return require(process.env.TOLLGATE_NATIVE_PATH)
  const triple = platformTriple()
  const tried = []
  const local = join(__dirname, `tollgate.${triple}.node`)
  if (existsSync(local)) return require(local)
  tried.push(local)
  try {
    return require(`tollgate-${triple}`)
  } catch (e) {
    if (e?.code !== 'MODULE_NOT_FOUND') throw e
    tried.push(`tollgate-${triple}`)
  }
  throw new Error(
    `tollgate has no native addon for ${triple} (looked for ${tried.join(', ')}). ` +
      'Install a package built for this platform, or build the addon from the source ' +
      'repository (bindings/node: npm run build).',
  )
}

module.exports = load()
