// Builds the addon from source with cargo and copies it to ./tollgate.node.
//
// Usage: node scripts/build.mjs [--debug]
//
// Cargo is called directly rather than through `napi build`: @napi-rs/cli 3 always passes
// `--target <host triple>`, which puts the build under target/<triple>/ and compiles every
// dependency a second time beside the workspace's own target/release. This way the addon
// shares the workspace's target directory (CARGO_TARGET_DIR when set) with the rest of tollgate.
import { spawn } from 'node:child_process'
import { copyFileSync, renameSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(dirname(fileURLToPath(import.meta.url)))
const debug = process.argv.includes('--debug')
const args = ['build', '-p', 'tollgate-node', '--message-format=json-render-diagnostics']
if (!debug) args.push('--release')

const cargo = spawn(process.env.CARGO || 'cargo', args, {
  cwd: here,
  stdio: ['ignore', 'pipe', 'inherit'],
})
let artifact = null
let rest = ''
cargo.stdout.setEncoding('utf8')
cargo.stdout.on('data', (chunk) => {
  rest += chunk
  const lines = rest.split('\n')
  rest = lines.pop()
  for (const line of lines) {
    if (!line.startsWith('{')) continue
    const msg = JSON.parse(line)
    if (msg.reason === 'compiler-artifact' && msg.target?.name === 'tollgate_node') {
      artifact = msg.filenames.find((f) => /\.(so|dylib|dll)$/.test(f)) ?? artifact
    }
  }
})
cargo.on('close', (code) => {
  if (code !== 0) {
    console.error(`cargo build failed (exit ${code})`)
    process.exit(code ?? 1)
  }
  if (!artifact) {
    console.error('cargo built no tollgate_node library')
    process.exit(1)
  }
  // Copy then rename, so a running process that has the old file open keeps a valid mapping.
  const out = join(here, 'tollgate.node')
  const tmp = `${out}.tmp`
  copyFileSync(artifact, tmp)
  rmSync(out, { force: true })
  renameSync(tmp, out)
  console.log(`built ${out} from ${artifact}`)
})
