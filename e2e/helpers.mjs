// The example app as a user gets it: installed from the packed tarballs, built with `next build`,
// served by `next start` on 127.0.0.1, driven by Debian's chromium.
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
export const APP = join(ROOT, 'examples', 'nextjs')
export const OUTPUT = join(ROOT, 'e2e', 'output')
const env = { ...process.env, NEXT_TELEMETRY_DISABLED: '1' }

/** Runs a command in `cwd`, returns its stdout and how long it took in seconds. */
export function timed(command, args, cwd) {
  const start = process.hrtime.bigint()
  const stdout = execFileSync(command, args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  return { stdout, seconds: Number(process.hrtime.bigint() - start) / 1e9 }
}

/** `npm ci` in the example: storage-quota comes from dist-pack/*.tgz (see its package.json). */
export function installApp() {
  const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
  for (const tarball of [`storage-quota-${version}.tgz`, `storage-quota-linux-x64-gnu-${version}.tgz`]) {
    if (!existsSync(join(ROOT, 'dist-pack', tarball))) throw new Error(`dist-pack/${tarball} is missing: run npm run pack:local`)
  }
  return timed('npm', ['ci', '--no-audit', '--no-fund'], APP).seconds
}

export function buildApp() {
  return timed(join(APP, 'node_modules', '.bin', 'next'), ['build'], APP).seconds
}

export async function freePort() {
  const server = createServer()
  await new Promise((done) => server.listen(0, '127.0.0.1', done))
  const { port } = server.address()
  await new Promise((done) => server.close(done))
  return port
}

/** `next start` on a free port; resolves once it answers. `stop()` ends it. */
export async function startApp(extraEnv) {
  const port = await freePort()
  const child = spawn(join(APP, 'node_modules', '.bin', 'next'), ['start', '-H', '127.0.0.1', '-p', String(port)], {
    cwd: APP,
    env: { ...env, ...extraEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
  let log = ''
  child.stdout.on('data', (chunk) => (log += chunk))
  child.stderr.on('data', (chunk) => (log += chunk))
  const exited = new Promise((done) => child.once('exit', done))
  const deadline = Date.now() + 60_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`next start exited with ${child.exitCode}:\n${log}`)
    if (await answers(port)) break
    if (Date.now() > deadline) throw new Error(`next start did not answer within 60 s:\n${log}`)
    await new Promise((done) => setTimeout(done, 250))
  }
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    log: () => log,
    async stop() {
      if (child.exitCode === null) process.kill(-child.pid, 'SIGTERM')
      await exited
    },
  }
}

function answers(port) {
  return new Promise((done) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      done(true)
    })
    socket.once('error', () => done(false))
  })
}

/** Debian's chromium with a fresh profile; nothing but 127.0.0.1 resolves. */
export async function launchBrowser() {
  const profile = mkdtempSync(join(tmpdir(), 'sq-e2e-profile-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    headless: true,
    viewport: { width: 900, height: 900 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
    ],
  })
  return {
    context,
    async close() {
      await context.close()
      rmSync(profile, { recursive: true, force: true })
    },
  }
}

/** Names in a directory, or [] when it does not exist. */
export function listDir(dir) {
  return existsSync(dir) ? readdirSync(dir).sort() : []
}
