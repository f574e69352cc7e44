'use strict'
// The platform part of the addon's file name, as napi-rs names it: `linux-x64-gnu`,
// `linux-arm64-musl`, `darwin-arm64`, `win32-x64-msvc`, ...

function isMusl() {
  // glibc reports its version in the process report's header; musl does not.
  const header = process.report?.getReport?.()?.header
  return !header?.glibcVersionRuntime
}

function platformTriple() {
  const { platform, arch } = process
  if (platform === 'linux') return `${platform}-${arch}-${isMusl() ? 'musl' : 'gnu'}`
  if (platform === 'win32') return `${platform}-${arch}-msvc`
  return `${platform}-${arch}`
}

module.exports = { platformTriple }
