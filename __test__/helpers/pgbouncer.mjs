// A PgBouncer of a test's own: Debian's `pgbouncer` package (1.18 on bookworm), its config in a
// temp dir, on a free local port, in front of one PostgreSQL server. PgBouncer refuses to run as
// root, so when the tests run as root it is started with `-u postgres`.
import { spawn } from 'node:child_process'
import { existsSync, rmSync } from 'node:fs'
import { chmod, chown, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after } from 'node:test'
import { serverPort } from './ports.mjs'

const BINARY = process.env.PGBOUNCER_BIN ?? ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find(existsSync) ?? 'pgbouncer'

/** Resolves once something accepts TCP connections on `port`, or rejects when `exited` does. */
async function listening(port, exited, log) {
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    const up = await new Promise((resolve) => {
      const socket = connect(port, '127.0.0.1')
      socket.once('connect', () => {
        socket.destroy()
        resolve(true)
      })
      socket.once('error', () => resolve(false))
    })
    if (up) return
    if (exited()) throw new Error(`pgbouncer exited at start:\n${log()}`)
    await new Promise((resolve) => setImmediate(resolve))
  }
  throw new Error(`pgbouncer did not listen on ${port}:\n${log()}`)
}

/** The user PgBouncer runs as (it refuses root): `postgres` when we are root. */
function runAs() {
  return process.getuid?.() === 0 ? 'postgres' : null
}

async function uidOf(user) {
  const { execFileSync } = await import('node:child_process')
  const [uid, gid] = ['-u', '-g'].map((flag) => Number(execFileSync('id', [flag, user]).toString().trim()))
  return { uid, gid }
}

/**
 * Starts PgBouncer in front of `server` (`{ host, port, user, password? }`). Resolves to
 * `{ port, url(database, { pooler }), restart(), stop(), log() }`; stopped when the test file
 * ends, or with `untilExit: true` when the process exits (for one shared by the whole file,
 * started from inside whichever test needs it first).
 * `url(db)` has `?pgbouncer=true`, the setting users put in a pooled URL.
 */
export async function startPgBouncer({
  server,
  poolMode = 'transaction',
  maxClientConn = 1000,
  defaultPoolSize = 8,
  tag = 'pgb',
  untilExit = false,
  /** Extra `[pgbouncer]` settings, e.g. `ignore_startup_parameters = options`. */
  extra = '',
} = {}) {
  const dir = await mkdtemp(join(tmpdir(), `sq-${tag}-`))
  const user = runAs()
  if (user) {
    const { uid, gid } = await uidOf(user)
    await chown(dir, uid, gid)
  }
  await chmod(dir, 0o755)
  const port = await serverPort()
  const serverPassword = server.password ? ` password=${server.password}` : ''
  const ini = join(dir, 'pgbouncer.ini')
  await writeFile(join(dir, 'userlist.txt'), `"${server.user ?? 'postgres'}" ""\n`)
  await writeFile(
    ini,
    `[databases]
* = host=${server.host ?? '127.0.0.1'} port=${server.port} user=${server.user ?? 'postgres'}${serverPassword}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${port}
unix_socket_dir =
auth_type = trust
auth_file = ${join(dir, 'userlist.txt')}
pool_mode = ${poolMode}
max_client_conn = ${maxClientConn}
default_pool_size = ${defaultPoolSize}
pidfile = ${join(dir, 'pgbouncer.pid')}
logfile =
log_connections = 0
log_disconnections = 0
admin_users = ${server.user ?? 'postgres'}
${extra}
`,
  )

  let child
  let output = ''
  let exited = false
  async function start() {
    exited = false
    const args = user ? ['-u', user, ini] : [ini]
    child = spawn(BINARY, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    const collect = (chunk) => {
      output = (output + chunk).slice(-20000)
    }
    child.stdout.on('data', collect)
    child.stderr.on('data', collect)
    if (untilExit) {
      // Neither the child nor its pipes keep the test process alive; it goes when we do.
      child.unref()
      child.stdout.unref?.()
      child.stderr.unref?.()
    }
    child.once('exit', () => {
      exited = true
    })
    child.once('error', (error) => {
      exited = true
      output += String(error)
    })
    await listening(port, () => exited, () => output)
  }

  async function kill(signal = 'SIGTERM') {
    if (!child || exited) return
    const gone = new Promise((resolve) => child.once('exit', resolve))
    child.kill(signal)
    await gone
  }

  await start()
  let stopped = false
  const bouncer = {
    port,
    poolMode,
    log: () => output,
    url(database, { pooler = true, user: login = server.user ?? 'postgres' } = {}) {
      return `postgres://${login}@127.0.0.1:${port}/${database}${pooler ? '?pgbouncer=true' : ''}`
    },
    /** Immediate shutdown (every client and server connection cut), then a fresh start. */
    async restart() {
      await kill('SIGTERM')
      await start()
    },
    async stop() {
      if (stopped) return
      stopped = true
      await kill('SIGTERM')
      await rm(dir, { recursive: true, force: true })
    },
  }
  if (untilExit) {
    process.once('exit', () => {
      if (!exited) child.kill('SIGKILL')
      rmSync(dir, { recursive: true, force: true })
    })
  } else {
    after(() => bouncer.stop())
  }
  return bouncer
}

