// Throwaway databases for tests: each test file creates its own and drops it at the end, so
// files never share state and can run in parallel.
import { readdirSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { after } from 'node:test'
import pg from 'pg'

// Tests are quiet: the package's default stderr output (slow calls on a loaded machine, the
// connections DROP DATABASE cuts at the end) is off unless STORAGE_QUOTA_LOG=warn is given.
// Tests about logging pass their own logger, which this does not affect.
if (!process.env.STORAGE_QUOTA_LOG) process.env.STORAGE_QUOTA_LOG = 'off'

/** The versions of every migration shipped (`migrations/NNNN_*.up.sql`), in order. */
export const MIGRATION_VERSIONS = readdirSync(new URL('../../migrations/', import.meta.url))
  .filter((name) => name.endsWith('.up.sql'))
  .map((name) => Number(name.slice(0, 4)))
  .sort((a, b) => a - b)

export const ADMIN_URL =
  process.env.TEST_DATABASE_URL ?? process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

function urlFor(database) {
  const url = new URL(ADMIN_URL)
  url.pathname = `/${database}`
  return url.toString()
}

/**
 * `STORAGE_QUOTA_TEST_POOLER=transaction` (or `session`): the URL a test database hands out
 * (`db.url`, what the tests give the addon) goes through a PgBouncer of this test file's own,
 * with `?pgbouncer=true`; `db.query` stays direct. CI runs the suites a second time this way.
 */
export const TEST_POOLER = process.env.STORAGE_QUOTA_TEST_POOLER || null
let bouncer
async function pooledUrlFor(database) {
  if (!TEST_POOLER) return urlFor(database)
  if (!['transaction', 'session'].includes(TEST_POOLER)) {
    throw new Error(`STORAGE_QUOTA_TEST_POOLER must be transaction or session, got ${TEST_POOLER}`)
  }
  if (!bouncer) {
    const { startPgBouncer } = await import('./pgbouncer.mjs')
    const admin = new URL(ADMIN_URL)
    bouncer = startPgBouncer({
      server: {
        host: admin.hostname,
        port: Number(admin.port || 5432),
        user: decodeURIComponent(admin.username || 'postgres'),
        password: admin.password ? decodeURIComponent(admin.password) : undefined,
      },
      poolMode: TEST_POOLER,
      // Session mode pins a server connection per client connection: room for every test's pools.
      defaultPoolSize: TEST_POOLER === 'session' ? 60 : 12,
      tag: `pgb-${TEST_POOLER}`,
      untilExit: true,
    })
  }
  return (await bouncer).url(database)
}

async function admin(sql) {
  const client = new pg.Client({ connectionString: ADMIN_URL })
  await client.connect()
  try {
    await client.query(sql)
  } finally {
    await client.end()
  }
}

/**
 * A fresh database and storage directory, dropped when the enclosing test (or, called at a
 * file's top level, the whole file) ends.
 * `db.query(sql, params)` runs raw SQL on it (as other code of the app would).
 */
export async function createTestDatabase(tag) {
  const name = `sq_test_${tag}_${randomBytes(4).toString('hex')}`
  await admin(`CREATE DATABASE ${name}`)
  const directUrl = urlFor(name)
  const url = await pooledUrlFor(name)
  const pool = new pg.Pool({ connectionString: directUrl, max: 4 })
  // DROP DATABASE … WITH (FORCE) at the end terminates whatever is still connected; an idle
  // client of this pool being cut then is expected, not an uncaught error.
  pool.on('error', () => {})
  const storageRoot = await mkdtemp(join(tmpdir(), `sq-${tag}-`))
  const db = {
    name,
    url,
    /** The database without the test pooler (same as `url` when there is none). */
    directUrl,
    storageRoot,
    query: (sql, params) => pool.query(sql, params),
    async drop() {
      // The storage root goes even when the database does not (a test that failed mid-way).
      try {
        await pool.end()
        await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      } finally {
        await rm(storageRoot, { recursive: true, force: true })
      }
    },
  }
  after(() => db.drop())
  return db
}

/** Runs `fn` and returns the error it rejects with; fails if it resolves. */
export async function rejection(promise) {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error('expected the call to reject, but it resolved')
}

/** A project row owned by `userId`, as the app would insert it. */
export async function insertProject(db, userId, name = 'project') {
  const { rows } = await db.query('INSERT INTO projects (user_id, name) VALUES ($1, $2) RETURNING id', [userId, name])
  return rows[0].id
}

/** A user's counters and ledger sum, as plain numbers (undefined when the user has no row). */
export async function quotaCounters(db, userId) {
  const { rows } = await db.query(
    `SELECT used_bytes::float8 AS used, reserved_bytes::float8 AS reserved,
            (SELECT coalesce(sum(bytes), 0)::float8 FROM quota_ledger WHERE user_id = $1) AS ledger
       FROM user_quotas WHERE user_id = $1`,
    [userId],
  )
  return rows[0]
}

/** Project counters (`quota_project_usage`) that are not the sum of their ledger entries, or are
 * below zero: none, in a database whose ledger has no baseline or carry entries. */
export async function wrongProjectCounters(db) {
  const { rows } = await db.query(
    `SELECT u.user_id, u.project_id, u.used_bytes::float8 AS counter, l.bytes AS ledger
       FROM quota_project_usage u
       CROSS JOIN LATERAL (SELECT coalesce(sum(bytes), 0)::float8 AS bytes FROM quota_ledger l
                            WHERE l.user_id = u.user_id AND l.project_id::text = u.project_id) l
      WHERE u.used_bytes <> l.bytes OR u.used_bytes < 0`,
  )
  return rows
}

/** Resolves once `n` sessions of the test's database wait on a lock (polled, no sleep). */
export async function untilLockWaiters(db, n) {
  for (;;) {
    const { rows } = await db.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
    )
    if (rows[0].n >= n) return
    await new Promise((resolve) => setImmediate(resolve))
  }
}

/** Holds `user`'s quota row locked in a transaction of its own until `release()`. */
export async function holdRow(db, user) {
  const other = new pg.Client({ connectionString: db.url })
  await other.connect()
  await other.query('BEGIN')
  await other.query('SELECT 1 FROM user_quotas WHERE user_id = $1 FOR UPDATE', [user])
  let open = true
  return {
    async release() {
      if (!open) return
      open = false
      await other.query('COMMIT')
      await other.end()
    },
  }
}
