// Builds the addons from source with cargo: the binding, copied to
// ./tollgate.<platform>.node (the name napi-rs gives a platform's binary, which native.js loads
// and the published package carries), and the test upstream, copied to ./testkit/testkit.node
// (for the tests, the benchmark and the examples; never published).
//
// Usage: node scripts/build.mjs [--debug] [--no-testkit]
//
// With TOLLGATE_NODE_PREBUILT=1 cargo is not run: the libraries are taken from the target
// directory as an earlier `cargo build --release -p tollgate-node -p tollgate-node-testkit`
// (with other packages) left them. CI builds every release artifact in one cargo invocation,
// so the core crate is compiled once.
//
// Cargo is called directly rather than through `napi build`: @napi-rs/cli 3 always passes
// `--target <host triple>`, which puts the build under target/<triple>/ and compiles every
// dependency a second time beside the workspace's own target/release. This way the addon
// shares the workspace's target directory (CARGO_TARGET_DIR when set) with the rest of tollgate.
import { spawn } from 'node:child_process'
import { copyFileSync, existsSync, renameSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(dirname(fileURLToPath(import.meta.url)))
const { platformTriple } = createRequire(import.meta.url)('../platform.js')
const debug = process.argv.includes('--debug')
const testkit = !process.argv.includes('--no-testkit')
// Where each crate's library goes.
const outputs = { tollgate_node: join(here, `tollgate.${platformTriple()}.node`) }
if (testkit) outputs.tollgate_node_testkit = join(here, 'testkit', 'testkit.node')
const args = ['build', '--message-format=json-render-diagnostics']
for (const name of Object.keys(outputs)) args.push('-p', name.replaceAll('_', '-'))
if (!debug) args.push('--release')

function install(artifacts) {
  for (const [name, out] of Object.entries(outputs)) {
    const artifact = artifacts[name]
    if (!artifact) {
      console.error(`cargo built no ${name} library`)
      process.exit(1)
    }
    // Copy then rename, so a running process that has the old file open keeps a valid mapping.
    const tmp = `${out}.tmp`
    copyFileSync(artifact, tmp)
    rmSync(out, { force: true })
    renameSync(tmp, out)
    console.log(`built ${out} from ${artifact}`)
  }
}

if (process.env.TOLLGATE_NODE_PREBUILT === '1') {
  const target = resolve(here, '../..', process.env.CARGO_TARGET_DIR || 'target', debug ? 'debug' : 'release')
  const found = {}
  for (const name of Object.keys(outputs)) {
    const lib = join(target, `lib${name}.so`)
    if (existsSync(lib)) found[name] = lib
  }
  install(found)
  process.exit(0)
}

const cargo = spawn(process.env.CARGO || 'cargo', args, {
  cwd: here,
  stdio: ['ignore', 'pipe', 'inherit'],
})
const artifacts = {}
let rest = ''
cargo.stdout.setEncoding('utf8')
cargo.stdout.on('data', (chunk) => {
  rest += chunk
  const lines = rest.split('\n')
  rest = lines.pop()
  for (const line of lines) {
    if (!line.startsWith('{')) continue
    const msg = JSON.parse(line)
    if (msg.reason === 'compiler-artifact' && msg.target?.name in outputs) {
      const lib = msg.filenames.find((f) => /\.(so|dylib|dll)$/.test(f))
      if (lib) artifacts[msg.target.name] = lib
    }
  }
})
cargo.on('close', (code) => {
  if (code !== 0) {
    console.error(`cargo build failed (exit ${code})`)
    process.exit(code ?? 1)
  }
  install(artifacts)
})
