// Throwaway benchmark databases: created, migrated by the addon, seeded in bulk with SQL, and
// dropped at the end (also on Ctrl-C).
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { createRequire } from 'node:module'
import { USER_BASE } from './sql.mjs'

const require = createRequire(import.meta.url)
const pg = require('pg')

export const ADMIN_URL =
  process.env.BENCH_DATABASE_URL ?? process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

const created = new Set()
const SEEDED = ['projects', 'user_quotas', 'project_storage_paths', 'quota_ledger', 'quota_reservations']

export async function admin(sql, params) {
  const client = new pg.Client({ connectionString: ADMIN_URL })
  await client.connect()
  try {
    return await client.query(sql, params)
  } finally {
    await client.end()
  }
}

export async function createDatabase(tag) {
  const name = `sq_bench_${tag}_${randomBytes(3).toString('hex')}`
  await admin(`CREATE DATABASE ${name}`)
  created.add(name)
  const url = new URL(ADMIN_URL)
  url.pathname = `/${name}`
  const storageRoot = await mkdtemp(join(tmpdir(), `sq-bench-${tag}-`))
  return { name, url: url.toString(), storageRoot }
}

export async function dropDatabase(db) {
  await admin(`DROP DATABASE IF EXISTS ${db.name} WITH (FORCE)`)
  created.delete(db.name)
  await rm(db.storageRoot, { recursive: true, force: true })
}

export async function dropAll() {
  for (const name of created) await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {})
  created.clear()
}

/** Runs SQL on the database with a short-lived connection. */
export async function query(db, sql, params) {
  const client = new pg.Client({ connectionString: db.url })
  await client.connect()
  try {
    return await client.query(sql, params)
  } finally {
    await client.end()
  }
}

/** Migrates with the addon itself, as an app would. Resolves to the time it took (ms). */
export async function migrate(db, options = {}) {
  const { createClient } = require('../../index.js')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, poolSize: 1, ...options })
  try {
    const start = performance.now()
    await client.migrate()
    return performance.now() - start
  } finally {
    await client.close()
  }
}

/**
 * `users` users (`1000001`…), each with one project (id `md5(user id)::uuid`), its storage path
 * and a quota row of `limitBytes`; `ledgerPerUser` earlier uploads each in the ledger (counted
 * in used_bytes); `reservationsPerUser` settled reservations each. Done in batches so a million rows do not need one huge transaction.
 */
export async function seed(db, { users, limitBytes = 1_073_741_824, ledgerPerUser = 0, reservationsPerUser = 0, batch = 1_000_000 }) {
  const client = new pg.Client({ connectionString: db.url })
  await client.connect()
  // A bulk load: drop the indexes and constraints of the seeded tables (and the foreign keys
  // pointing at them), insert, then build them again from their own definitions, which is
  // several times faster than maintaining random-uuid indexes row by row.
  const { rows: constraints } = await client.query(
    `SELECT conrelid::regclass::text AS tbl, conname, contype, pg_get_constraintdef(oid) AS def FROM pg_constraint
      WHERE contype IN ('p', 'u', 'f')
        AND (conrelid = ANY($1::regclass[]) OR confrelid = ANY($1::regclass[]))`,
    [SEEDED],
  )
  const { rows: indexes } = await client.query(
    `SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ANY($1::text[])
        AND indexname NOT IN (SELECT conname FROM pg_constraint)`,
    [SEEDED],
  )
  const keys = constraints.filter((c) => c.contype !== 'f')
  const foreign = constraints.filter((c) => c.contype === 'f')
  for (const c of foreign) await client.query(`ALTER TABLE ${c.tbl} DROP CONSTRAINT ${c.conname}`)
  for (const c of keys) await client.query(`ALTER TABLE ${c.tbl} DROP CONSTRAINT ${c.conname}`)
  for (const i of indexes) await client.query(`DROP INDEX ${i.indexname}`)
  try {
    for (let from = 1; from <= users; from += batch) {
      const to = Math.min(users, from + batch - 1)
      const range = [from, to, USER_BASE]
      await client.query(
        `INSERT INTO projects (id, user_id, name)
         SELECT md5(($3::int + i)::text)::uuid, ($3::int + i)::text, 'bench' FROM generate_series($1::int, $2::int) i`,
        range,
      )
      await client.query(
        `INSERT INTO user_quotas (user_id, limit_bytes, used_bytes)
         SELECT ($3::int + i)::text, $4::bigint, $5::bigint FROM generate_series($1::int, $2::int) i`,
        [...range, limitBytes, ledgerPerUser * 1000],
      )
      // Without statistics on the two tables just filled (and their indexes dropped), the
      // planner may join them with a nested loop: minutes at 10,000 users instead of a second.
      await client.query('ANALYZE projects, user_quotas')
      await client.query(
        `INSERT INTO project_storage_paths (project_id, user_id, quota_id, key, path)
         SELECT p.id, p.user_id, q.id, p.user_id || '/' || p.id || '/', $4 || '/' || p.user_id || '/' || p.id || '/'
           FROM generate_series($1::int, $2::int) i
           JOIN projects p ON p.id = md5(($3::int + i)::text)::uuid
           JOIN user_quotas q ON q.user_id = p.user_id`,
        [...range, db.storageRoot],
      )
      if (reservationsPerUser > 0) {
        // Settled reservations (history, counting nothing): with the table analyzed non-empty,
        // the plans a connection caches for its reservation statements use its indexes from
        // the start, as on a database in use, instead of sequential scans planned for an empty
        // table, which get slower with every reservation the run adds until autovacuum analyzes
        // the table again (a contender measured then ran at a third of its speed).
        await client.query(
          `INSERT INTO quota_reservations (id, user_id, project_id, bytes, status, committed_bytes, expires_at, settled_at)
           SELECT gen_random_uuid(), ($3::int + i)::text, md5(($3::int + i)::text)::uuid, 1000, 'committed', 1000, now(), now()
             FROM generate_series($1::int, $2::int) i, generate_series(1, $4::int) j`,
          [...range, reservationsPerUser],
        )
      }
      if (ledgerPerUser > 0) {
        await client.query(
          `INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
           SELECT ($3::int + i)::text, md5(($3::int + i)::text)::uuid, 'seed-' || j, 'upload', 1000
             FROM generate_series($1::int, $2::int) i, generate_series(1, $4::int) j`,
          [...range, ledgerPerUser],
        )
      }
    }
  } finally {
    await client.query(`SET maintenance_work_mem = '256MB'`)
    for (const i of indexes) await client.query(i.indexdef)
    for (const c of keys) await client.query(`ALTER TABLE ${c.tbl} ADD CONSTRAINT ${c.conname} ${c.def}`)
    for (const c of foreign) await client.query(`ALTER TABLE ${c.tbl} ADD CONSTRAINT ${c.conname} ${c.def}`)
    await client.query('VACUUM ANALYZE')
    await client.end()
  }
}
