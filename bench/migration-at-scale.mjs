// Migrations on an existing app with traffic: `node bench/migration-at-scale.mjs --projects=100000,1000000`
// (add --baseline to also time the first release's one-transaction 0001 on the same data).
//
// For each size: a throwaway database with `projects` (uuid id, text owner, size_bytes, an
// owner index; 4 projects per owner), then four app loops — SELECT by id, INSERT, UPDATE by id,
// DELETE by id of a row it inserted — each firing every 20 ms on its own connection for the
// whole run, recording how long each statement took. Times boot-time migrate() (schema only),
// then the backfill, and reports the longest wait of each app statement. The database is
// dropped at the end (also on Ctrl-C).
import { createRequire } from 'node:module'
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { createDatabase, dropAll, dropDatabase, query } from './lib/db.mjs'

const require = createRequire(import.meta.url)
const pg = require('pg')
const { createClient } = require('../index.js')

const { values } = parseArgs({
  options: {
    projects: { type: 'string', default: '100000,1000000' },
    'batch-size': { type: 'string', default: '10000' }, // the package's default
    baseline: { type: 'boolean', default: false },
    // Stop the backfill after this many seconds (0: run it to the end) and report its rate.
    'backfill-seconds': { type: 'string', default: '0' },
  },
})
const sizes = values.projects.split(',').map(Number)
const batchSize = Number(values['batch-size'])
process.on('SIGINT', () => dropAll().finally(() => process.exit(130)))
const log = (line) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${line}`)

async function seed(db, projects) {
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  await c.query(`CREATE TABLE projects (
      id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id text NOT NULL, name text NOT NULL,
      size_bytes bigint, created_at timestamptz NOT NULL DEFAULT now())`)
  const step = 1_000_000
  for (let from = 1; from <= projects; from += step) {
    const to = Math.min(from + step - 1, projects)
    await c.query(
      `INSERT INTO projects (user_id, name, size_bytes)
       SELECT 'user_' || (i % $3::int), 'project ' || i, (random() * 10000000)::bigint FROM generate_series($1::int, $2::int) i`,
      [from, to, Math.ceil(projects / 4)],
    )
  }
  await c.query('CREATE INDEX projects_user_id_idx ON projects (user_id)')
  await c.query('VACUUM ANALYZE projects')
  const ids = (await c.query('SELECT id FROM projects TABLESAMPLE SYSTEM (1) LIMIT 2000')).rows.map((r) => r.id)
  await c.end()
  return ids
}

/** Four app loops, one statement each every 20 ms, until `stop()`; the longest waits. */
async function appTraffic(db, ids) {
  const kinds = ['SELECT', 'INSERT', 'UPDATE', 'DELETE']
  const stats = Object.fromEntries(kinds.map((k) => [k, { n: 0, max: 0, errors: 0 }]))
  let running = true
  const inserted = []
  const loops = kinds.map(async (kind) => {
    const c = new pg.Client({ connectionString: db.url, application_name: `app-${kind}` })
    c.on('error', () => {})
    await c.connect()
    let i = 0
    while (running) {
      const tick = performance.now()
      const id = ids[i++ % ids.length]
      try {
        if (kind === 'SELECT') await c.query('SELECT id, user_id, name, size_bytes FROM projects WHERE id = $1', [id])
        if (kind === 'INSERT') {
          const { rows } = await c.query(`INSERT INTO projects (user_id, name, size_bytes) VALUES ('user_app' || $1::text, 'new', 0) RETURNING id`, [i % 500])
          inserted.push(rows[0].id)
        }
        if (kind === 'UPDATE') await c.query(`UPDATE projects SET name = 'renamed ' || $2::text WHERE id = $1`, [id, i])
        if (kind === 'DELETE' && inserted.length > 10) await c.query('DELETE FROM projects WHERE id = $1', [inserted.shift()])
        stats[kind].n += 1
      } catch (error) {
        stats[kind].errors += 1
        stats[kind].lastError = error.message
      }
      const took = performance.now() - tick
      stats[kind].max = Math.max(stats[kind].max, took)
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, 20 - took)))
    }
    await c.end()
  })
  return {
    stats,
    reset() {
      for (const k of kinds) Object.assign(stats[k], { n: 0, max: 0, errors: 0 })
    },
    snapshot: () => JSON.parse(JSON.stringify(stats)),
    async stop() {
      running = false
      await Promise.all(loops)
    },
  }
}

async function measure(projects) {
  const db = await createDatabase(`migscale${projects}`)
  try {
    let start = performance.now()
    const ids = await seed(db, projects)
    log(`${projects.toLocaleString('en-US')} projects seeded in ${((performance.now() - start) / 1000).toFixed(1)} s`)
    const result = { projects }
    if (values.baseline) {
      // The first release: 0001 with its backfill in one transaction (its own 60 s statement_timeout).
      const sql = await readFile(new URL('../__test__/fixtures/0001_storage_quota.first-release.up.sql', import.meta.url), 'utf8')
      const app = await appTraffic(db, ids)
      const c = new pg.Client({ connectionString: db.url })
      await c.connect()
      start = performance.now()
      try {
        await c.query(`BEGIN; SET LOCAL storage_quota.storage_root = '${db.storageRoot}'; ${sql}`)
        result.baseline = { ok: true }
      } catch (error) {
        result.baseline = { ok: false, error: error.message }
      }
      result.baseline.ms = performance.now() - start
      await c.query('ROLLBACK').catch(() => {})
      await c.end()
      await app.stop()
      result.baseline.app = app.snapshot()
      log(`baseline (first-release 0001, rolled back): ${JSON.stringify(result.baseline)}`)
    }
    const app = await appTraffic(db, ids)
    const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false, poolSize: 2 })
    try {
      start = performance.now()
      const migrated = await client.migrate()
      result.migrateMs = performance.now() - start
      result.migrateApp = app.snapshot()
      log(`migrate(): applied ${migrated.applied.join(', ')} in ${result.migrateMs.toFixed(0)} ms; backfill pending: ${!migrated.backfill.done}`)
      start = performance.now()
      let last = 0
      const limit = Number(values['backfill-seconds'])
      const signal = limit > 0 ? AbortSignal.timeout(limit * 1000) : undefined
      const done = await client.backfill({
        batchSize,
        signal,
        onProgress(p) {
          if (performance.now() - last > 10_000) {
            last = performance.now()
            log(`  ${p.phase} ${p.scanned.toLocaleString('en-US')}/${(p.totalProjects ?? 0).toLocaleString('en-US')}`)
          }
        },
      })
      result.backfillMs = performance.now() - start
      result.scanned = done.scanned
      result.rate = done.scanned / (result.backfillMs / 1000)
      result.lockRetries = done.lockRetries
      result.finished = done.done
      if (!done.done) {
        result.etaMs = ((done.totalProjects - done.scanned) / result.rate) * 1000
        log(`backfill stopped after ${limit} s as asked: ${done.scanned} of ${done.totalProjects}`)
      }
    } finally {
      await client.close()
      await app.stop()
    }
    result.app = app.snapshot()
    const check = await query(
      db,
      `SELECT (SELECT count(*) FROM user_quotas)::int AS users,
              (SELECT count(*) FROM user_quotas WHERE NOT seeded)::int AS unseeded,
              (SELECT sum(used_bytes) FROM user_quotas)::text AS used,
              (SELECT sum(size_bytes) FROM projects WHERE size_bytes > 0)::text AS sizes,
              (SELECT count(*) FROM quota_project_usage)::int AS counters,
              (SELECT count(*) FROM project_storage_paths)::int AS paths`,
    )
    result.check = check.rows[0]
    log(`backfill: ${result.scanned} projects in ${(result.backfillMs / 1000).toFixed(1)} s (${Math.round(result.rate)}/s); app max waits ${JSON.stringify(result.app)}; ${JSON.stringify(result.check)}`)
    return result
  } finally {
    await dropDatabase(db)
  }
}

const results = []
for (const projects of sizes) results.push(await measure(projects))
console.log(JSON.stringify(results, null, 2))
