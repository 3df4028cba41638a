// Upgrading from 0.1.0 when storage-quota's own tables are big, with app traffic on them:
// `node bench/upgrade-at-scale.mjs --ledger=1000000,10000000 [--projects=1000000] [--only=online|in-place]`
//
// For each ledger size: a database as 0.1.0 left it (0001 and 0002 applied and recorded) with
// `--projects` projects, each with a path record and a (settled) reservation, a simulation job
// per ten projects, and `--ledger` upload entries spread over them. Then, each on its own copy
// of that database (CREATE DATABASE … TEMPLATE):
// - online: what `storage-quota migrate` does: prepareMigrations() (batches of 10,000), then
//   migrate();
// - in place: migrate() with STORAGE_QUOTA_ONLINE_MIGRATION_ROWS above every table's rows:
//   the path every upgrade took before (0003's index builds and counter fill, 0006's
//   ALTER COLUMN TYPE rewrites, inside the migrations' transactions, 60 s statement_timeout).
// Throughout, four loops of 0.1.0's statements on storage-quota's tables, each on its own
// connection firing every 20 ms: an upload (quota row UPDATE + ledger INSERT, one
// transaction), a reservation INSERT then its commit UPDATE, a new project's path INSERT, a
// per-project ledger SUM. Each records the longest it took. Databases are dropped at the end.
import { createRequire } from 'node:module'
import { readFile } from 'node:fs/promises'
import { createHash, randomUUID } from 'node:crypto'
import { parseArgs } from 'node:util'
import { admin, createDatabase, dropAll, dropDatabase, query } from './lib/db.mjs'

const require = createRequire(import.meta.url)
const pg = require('pg')
const { createClient } = require('../index.js')

const { values } = parseArgs({
  options: {
    ledger: { type: 'string', default: '1000000' },
    projects: { type: 'string', default: '1000000' },
    only: { type: 'string' },
  },
})
const ledgers = values.ledger.split(',').map(Number)
const projects = Number(values.projects)
const users = Math.ceil(projects / 4)
process.on('SIGINT', () => dropAll().finally(() => process.exit(130)))
const log = (line) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${line}`)
const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`
const load = async () => (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ')

async function migrationText(name) {
  const sql = await readFile(new URL(`../migrations/${name}.up.sql`, import.meta.url), 'utf8')
  return { sql, checksum: createHash('sha256').update(sql).digest('hex') }
}

/** A database as 0.1.0 left it, with big tables of storage-quota's own. */
async function released(ledger) {
  const db = await createDatabase(`upg${ledger}`)
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  const m1 = await migrationText('0001_storage_quota')
  const m2 = await migrationText('0002_quota_lifecycle')
  await c.query(`CREATE TABLE projects (id uuid PRIMARY KEY, user_id text NOT NULL, name text NOT NULL)`)
  await c.query(`BEGIN; ${m1.sql}
    CREATE TABLE storage_quota_migrations (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now());
    INSERT INTO storage_quota_migrations (version, name, checksum) VALUES (1, 'storage_quota', '${m1.checksum}'); COMMIT`)
  await c.query(`BEGIN; ${m2.sql} INSERT INTO storage_quota_migrations (version, name, checksum) VALUES (2, 'quota_lifecycle', '${m2.checksum}'); COMMIT`)
  await c.query(`SET statement_timeout = 0`)
  await c.query(`INSERT INTO projects (id, user_id, name) SELECT md5('p' || i)::uuid, 'user_' || (i % ${users}), 'p' FROM generate_series(1, ${projects}) i`)
  await c.query(`CREATE INDEX projects_user_id_idx ON projects (user_id)`)
  await c.query(`INSERT INTO user_quotas (user_id, limit_bytes) SELECT 'user_' || u, 1e15 FROM generate_series(0, ${users - 1}) u`)
  await c.query(`INSERT INTO project_storage_paths (project_id, user_id, quota_id, key, path)
    SELECT p.id, p.user_id, q.id, p.user_id || '/' || p.id || '/', '/srv/storage/' || p.user_id || '/' || p.id || '/'
      FROM projects p JOIN user_quotas q USING (user_id)`)
  await c.query(`INSERT INTO quota_reservations (id, user_id, project_id, bytes, status, committed_bytes, expires_at, settled_at)
    SELECT md5('r' || i)::uuid, 'user_' || (i % ${users}), md5('p' || i)::uuid, 1000, 'committed', 1000, now(), now()
      FROM generate_series(1, ${projects}) i`)
  await c.query(`INSERT INTO simulation_jobs (project_id, user_id) SELECT id, user_id FROM projects WHERE name = 'p' AND random() < 0.1`)
  const step = 1_000_000
  for (let from = 1; from <= ledger; from += step) {
    const to = Math.min(from + step - 1, ledger)
    // Entry i goes to project (i mod projects) + 1, owned by 'user_' || that mod users.
    await c.query(`INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
      SELECT 'user_' || ((i % ${projects} + 1) % ${users}), md5('p' || (i % ${projects} + 1))::uuid, 'u' || i, 'upload', 1000
        FROM generate_series(${from}, ${to}) i`)
  }
  await c.query('VACUUM ANALYZE')
  await c.end()
  return db
}

/** 0.1.0's statements on our tables, each loop every 20 ms, until stop(); the longest waits. */
async function appTraffic(db) {
  const kinds = ['upload', 'reserve', 'path', 'read']
  const stats = Object.fromEntries(kinds.map((k) => [k, { n: 0, max: 0, errors: 0 }]))
  let running = true
  let phase = 'prepare'
  const byPhase = {}
  const loops = kinds.map(async (kind) => {
    const c = new pg.Client({ connectionString: db.url, application_name: `app-${kind}` })
    c.on('error', () => {})
    await c.connect()
    let i = 0
    while (running) {
      const tick = performance.now()
      i += 1
      const p = (i * 7919) % projects + 1
      const h = createHash('md5').update(`p${p}`).digest('hex') // md5('p' || p)::uuid, as seeded
      const project = `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
      const user = `user_${p % users}`
      const start = performance.now()
      try {
        if (kind === 'upload') {
          await c.query('BEGIN')
          await c.query('UPDATE user_quotas SET used_bytes = used_bytes + 1, updated_at = now() WHERE user_id = $1', [user])
          await c.query(`INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes) VALUES ($1, $2, $3, 'upload', 1)`, [user, project, `app-${randomUUID()}`])
          await c.query('COMMIT')
        }
        if (kind === 'reserve') {
          const id = randomUUID()
          await c.query(`INSERT INTO quota_reservations (id, user_id, project_id, bytes, expires_at) VALUES ($1, $2, $3, 1, now() + interval '1 hour')`, [id, user, project])
          await c.query(`UPDATE quota_reservations SET status = 'committed', committed_bytes = 1, settled_at = now() WHERE id = $1`, [id])
        }
        if (kind === 'path') {
          const id = randomUUID()
          await c.query(`INSERT INTO projects (id, user_id, name) VALUES ($1, $2, 'new')`, [id, user])
          await c.query(`INSERT INTO project_storage_paths (project_id, user_id, quota_id, key, path)
            SELECT $1, $2, q.id, $2 || '/' || $3 || '/', '/srv/storage/' || $2 || '/' || $3 || '/' FROM user_quotas q WHERE q.user_id = $2`, [id, user, id])
        }
        if (kind === 'read') await c.query('SELECT coalesce(sum(bytes), 0) FROM quota_ledger WHERE user_id = $1 AND project_id = $2', [user, project])
        stats[kind].n += 1
      } catch (error) {
        await c.query('ROLLBACK').catch(() => {})
        stats[kind].errors += 1
        stats[kind].lastError = error.message
      }
      const took = performance.now() - start
      stats[kind].max = Math.max(stats[kind].max, took)
      byPhase[phase] ??= {}
      byPhase[phase][kind] = Math.max(byPhase[phase][kind] ?? 0, took)
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, 20 - (performance.now() - tick))))
    }
    await c.end()
  })
  return {
    setPhase: (name) => (phase = name),
    snapshot: () => ({ stats: JSON.parse(JSON.stringify(stats)), byPhase: JSON.parse(JSON.stringify(byPhase)) }),
    async stop() {
      running = false
      await Promise.all(loops)
    },
  }
}

async function counterCheck(db) {
  const { rows } = await query(db, `SET statement_timeout = 0;
    SELECT count(*) FILTER (WHERE l.bytes IS DISTINCT FROM u.used_bytes)::int AS wrong, count(*)::int AS counters
      FROM (SELECT user_id, project_id::text AS project_id, sum(bytes)::bigint AS bytes FROM quota_ledger
             WHERE project_id IS NOT NULL GROUP BY 1, 2) l
      FULL JOIN quota_project_usage u USING (user_id, project_id)`).then((r) => r[1])
  return rows[0]
}

async function upgrade(template, mode) {
  const db = await createDatabase(`upg_${mode.replace('-', '')}`)
  await admin(`DROP DATABASE ${db.name}`)
  await admin(`CREATE DATABASE ${db.name} TEMPLATE ${template.name}`)
  const result = { mode, loadBefore: await load() }
  process.env.STORAGE_QUOTA_ONLINE_MIGRATION_ROWS = mode === 'online' ? '10000' : '1000000000000'
  const app = await appTraffic(db)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false, poolSize: 2 })
  const start = performance.now()
  try {
    if (mode === 'online') {
      let last = 0
      const prepared = await client.prepareMigrations({
        batchSize: 10_000,
        onProgress(p) {
          if (performance.now() - last > 15_000) {
            last = performance.now()
            log(`  prepare step ${p.tasksDone + 1}/${p.tasksTotal}: ${p.next ?? 'done'} ${p.rowsDone}/${p.rowsTotal ?? '?'}`)
          }
        },
      })
      result.prepareMs = performance.now() - start
      result.prepareLoad = await load()
      log(`  prepared in ${seconds(result.prepareMs)} (${prepared.tasksTotal} tasks)`)
    }
    app.setPhase('migrate')
    const migrateStart = performance.now()
    try {
      const migrated = await client.migrate()
      result.applied = migrated.applied
      result.ok = true
    } catch (error) {
      result.ok = false
      result.error = `${error.code}: ${error.message}`
    }
    result.migrateMs = performance.now() - migrateStart
    result.totalMs = performance.now() - start
    result.loadAfter = await load()
  } finally {
    await client.close()
    await app.stop()
  }
  Object.assign(result, app.snapshot())
  if (result.ok) result.check = await counterCheck(db)
  log(`${mode}: ${result.ok ? 'ok' : 'FAILED'} in ${seconds(result.totalMs)} (migrate() ${seconds(result.migrateMs)}); longest waits ${JSON.stringify(result.byPhase)}${result.error ? `; ${result.error}` : ''}`)
  await dropDatabase(db)
  return result
}

const results = []
for (const ledger of ledgers) {
  let start = performance.now()
  const template = await released(ledger)
  log(`0.1.0 database: ${ledger.toLocaleString('en-US')} ledger entries, ${projects.toLocaleString('en-US')} projects/paths/reservations, seeded in ${seconds(performance.now() - start)}`)
  const sizes = (await query(template, `SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) AS size FROM pg_class WHERE relname IN ('quota_ledger', 'project_storage_paths', 'quota_reservations', 'simulation_jobs')`)).rows
  const entry = { ledger, projects, sizes }
  for (const mode of ['in-place', 'online']) {
    if (values.only && values.only !== mode) continue
    start = performance.now()
    entry[mode] = await upgrade(template, mode)
  }
  await dropDatabase(template)
  results.push(entry)
}
console.log(JSON.stringify(results, null, 2))
