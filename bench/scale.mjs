// Scale: latency with few vs. many users, migration time on an existing app, memory per driver.
import { fork } from 'node:child_process'
import os from 'node:os'
import { Worker } from './lib/workers.mjs'
import { createDatabase, dropDatabase, migrate, query, seed } from './lib/db.mjs'
import { fmtMs, fmtOps, median, table } from './lib/stats.mjs'
import { RECORD_UPLOAD, SELECT_USAGE, projectId, userId } from './lib/sql.mjs'

/** checkQuota and recordUpload latency (ours) on a small and a large database, interleaved. */
export async function scaleLatency({ sizes, reps, warmupMs, durationMs, poolSize }, log) {
  const dbs = []
  const workers = []
  try {
    for (const users of sizes) {
      const db = await createDatabase(`scale${users}`)
      dbs.push({ db, users })
      await migrate(db)
      const start = performance.now()
      await seed(db, { users, ledgerPerUser: 1 })
      dbs.at(-1).plans = await plans(db, users)
      log(`seeded ${users.toLocaleString('en-US')} users, projects, paths and ledger rows in ${((performance.now() - start) / 1000).toFixed(1)} s`)
      const worker = new Worker('ours')
      workers.push(worker)
      await worker.open({ url: db.url, poolSize })
    }
    const rows = []
    for (const op of ['checkQuota', 'recordUpload']) {
      for (const concurrency of [1, 16]) {
        const samples = sizes.map(() => [])
        for (let rep = 0; rep < reps; rep++) {
          for (let i = 0; i < sizes.length; i++) {
            const spec = { op, concurrency, warmupMs, durationMs, users: sizes[i], hot: false }
            samples[i].push(await workers[i].run(spec))
          }
        }
        const row = { op, concurrency, sizes: {} }
        sizes.forEach((users, i) => {
          row.sizes[users] = {
            opsPerSec: median(samples[i].map((r) => r.opsPerSec)),
            p50: median(samples[i].map((r) => r.p50)),
            p99: median(samples[i].map((r) => r.p99)),
          }
        })
        rows.push(row)
        log(`scale ${op} c=${concurrency}: ` + sizes.map((u) => `${u}: p50 ${fmtMs(row.sizes[u].p50)} ms`).join(', '))
      }
    }
    return { rows, plans: dbs.map((d) => d.plans) }
  } finally {
    for (const worker of workers) await worker.close()
    for (const worker of workers) worker.kill()
    for (const { db } of dbs) await dropDatabase(db)
  }
}

/** Scans and buffers of one execution of `sql` (in a transaction rolled back afterwards). */
async function plan(db, sql, params) {
  const { rows } = await query(db, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${sql}`, params)
  const root = rows[0]['QUERY PLAN'][0].Plan
  const scans = new Set()
  const walk = (node) => {
    if (/Scan|ModifyTable/.test(node['Node Type'])) {
      scans.add(`${node['Node Type']}${node['Index Name'] ? ` using ${node['Index Name']}` : ''}${node['Relation Name'] ? ` on ${node['Relation Name']}` : ''}`)
    }
    for (const child of node.Plans ?? []) walk(child)
  }
  walk(root)
  return { buffers: root['Shared Hit Blocks'] + root['Shared Read Blocks'], scans: [...scans].sort() }
}

/** Plans of the two statements on one database: which index scans, how many pages. */
async function plans(db, users) {
  const u = userId(Math.ceil(users / 2))
  const read = await plan(db, SELECT_USAGE, [u])
  const write = await plan(db, RECORD_UPLOAD, [u, projectId(u), `plan-${users}`, 1])
  return { users, read, write }
}

export function plansMarkdown(list) {
  const n = (u) => u.toLocaleString('en-US')
  return table(
    ['users', '`checkQuota` statement: pages touched', '`recordUpload` statement: pages touched', 'scans (both sizes must match)'],
    list.map((p) => [n(p.users), p.read.buffers, p.write.buffers, [...new Set([...p.read.scans, ...p.write.scans])].join('; ')]),
  )
}

export function scaleMarkdown(rows, sizes) {
  const n = (u) => u.toLocaleString('en-US')
  return table(
    ['operation', 'conc.', ...sizes.map((u) => `${n(u)} users: ops/s`), ...sizes.map((u) => `${n(u)} users: p50 / p99 ms`)],
    rows.map((r) => [
      `\`${r.op}\``,
      r.concurrency,
      ...sizes.map((u) => fmtOps(r.sizes[u].opsPerSec)),
      ...sizes.map((u) => `${fmtMs(r.sizes[u].p50)} / ${fmtMs(r.sizes[u].p99)}`),
    ]),
  )
}

/** `migrate()` on an app database that already has `projects` (with sizes) but no quota tables. */
export async function migrationTime({ projects, projectsPerUser }, log) {
  const db = await createDatabase('migr')
  try {
    await query(
      db,
      `CREATE TABLE projects (
         id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
         user_id text NOT NULL,
         name text NOT NULL,
         size_bytes bigint,
         created_at timestamptz NOT NULL DEFAULT now()
       );
       CREATE INDEX projects_user_id_idx ON projects (user_id);`,
    )
    await query(
      db,
      `INSERT INTO projects (user_id, name, size_bytes)
       SELECT 'user_' || lpad((i % $2::int)::text, 8, '0'), 'project ' || i, (random() * 10000000)::bigint
         FROM generate_series(1, $1::int) i`,
      [projects, Math.ceil(projects / projectsPerUser)],
    )
    await query(db, 'VACUUM ANALYZE projects')
    // First as an app would call it, with the client's default options.
    let defaults
    try {
      defaults = { ok: true, ms: await migrate(db) }
    } catch (error) {
      defaults = { ok: false, code: error.code, message: error.message }
      log(`migration with default options failed: ${error.code}: ${error.message}`)
    }
    // Then, if that failed (it rolls back), with no statement timeout.
    const schemaMs = defaults.ok ? defaults.ms : await migrate(db, { statementTimeoutMs: 0 })
    // migrate() applies the schema only on an app this large; the backfill does the data.
    const { createClient } = await import('../index.js')
    const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false, poolSize: 1 })
    const start = performance.now()
    try {
      await client.backfill()
    } finally {
      await client.close()
    }
    const backfillMs = performance.now() - start
    const ms = schemaMs + backfillMs
    const counts = await query(
      db,
      `SELECT (SELECT count(*) FROM user_quotas)::int AS users, (SELECT count(*) FROM project_storage_paths)::int AS paths,
              (SELECT count(*) FROM quota_ledger)::int AS ledger`,
    )
    const result = { projects, ms, schemaMs, backfillMs, defaults, ...counts.rows[0] }
    log(`migration of ${projects} projects: ${(ms / 1000).toFixed(2)} s (schema ${(schemaMs / 1000).toFixed(2)} s, backfill ${(backfillMs / 1000).toFixed(2)} s)`)
    return result
  } finally {
    await dropDatabase(db)
  }
}

function rssOf(name, url, poolSize, rounds) {
  // `name` is a mode, optionally with environment for A/B runs: `addon@MALLOC_ARENA_MAX=1`.
  const [mode, ...assignments] = name.split('@')
  const env = { ...process.env, ...Object.fromEntries(assignments.map((a) => a.split('='))) }
  return new Promise((resolve, reject) => {
    const child = fork(new URL('./lib/rss-child.mjs', import.meta.url), [mode, url, String(poolSize), String(rounds)], {
      env,
      execArgv: ['--expose-gc'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    })
    child.on('error', reject)
    child.on('exit', (code) => code !== 0 && reject(new Error(`rss child ${name} exited ${code}`)))
    child.once('message', async (message) => {
      let connections = 0
      if (mode !== 'bare') {
        const { rows } = await query(
          { url },
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1`,
          [`rss-${mode}`],
        )
        connections = rows[0].n
      }
      child.send('exit')
      child.once('exit', () => resolve({ ...message, connections }))
    })
  })
}

export const MEMORY_MODES = ['bare', 'addon', 'ours', 'ours-zod', 'pg', 'postgresjs']
const MEMORY_FIELDS = ['rss', 'anon', 'file', 'threads', 'heapUsed', 'v8Physical', 'external', 'connections', 'calls']

/**
 * Memory of a Node process with each driver's pool open, after every contender served the same
 * calls (`rounds` rounds of poolSize × 4 concurrent checkQuota/recordUpload, see
 * lib/rss-child.mjs). The modes run interleaved, one fresh process each, `reps` times; every
 * field is the median over the repetitions. A sample whose pool did not open all `poolSize`
 * connections is reported (column "connections open"), not hidden.
 */
export async function memory({ poolSize, reps, rounds = 20, modes = MEMORY_MODES }, log) {
  const db = await createDatabase('rss')
  try {
    await migrate(db)
    await seed(db, { users: 64 })
    const samples = Object.fromEntries(modes.map((m) => [m, []]))
    const load = []
    for (let rep = 0; rep < reps; rep++) {
      for (const mode of modes) {
        load.push(os.loadavg()[0])
        samples[mode].push(await rssOf(mode, db.url, poolSize, rounds))
      }
    }
    const result = { rounds, reps, load: { min: Math.min(...load), max: Math.max(...load) }, modes: {} }
    for (const mode of modes) {
      result.modes[mode] = Object.fromEntries(MEMORY_FIELDS.map((f) => [f, median(samples[mode].map((s) => s[f]))]))
      result.modes[mode].samples = samples[mode].map((s) => s.rss)
    }
    log(`memory (${rounds} rounds): ` + modes.map((m) => `${m} ${(result.modes[m].rss / 2 ** 20).toFixed(1)} MB`).join(', '))
    return result
  } finally {
    await dropDatabase(db)
  }
}

const MODE_NAMES = {
  bare: () => 'bare Node',
  addon: (n) => `storage-quota native addon alone (binding.js), poolSize ${n}`,
  ours: (n) => `storage-quota package (index.js: addon + JS layer, Zod not loaded), poolSize ${n}`,
  'ours-zod': (n) => `storage-quota package with an exported Zod schema used (loads Zod), poolSize ${n}`,
  pg: (n) => `pg Pool, max ${n}`,
  postgresjs: (n) => `postgres.js, max ${n}`,
}

export function memoryMarkdown(result, poolSize) {
  const mb = (b) => `${(b / 2 ** 20).toFixed(1)} MB`
  const modes = Object.keys(result.modes)
  const bare = result.modes.bare?.rss
  const pg = result.modes.pg?.rss
  const over = (m, f) => (m === 'bare' || !result.modes.bare ? '–' : `+${mb(result.modes[m][f] - result.modes.bare[f])}`)
  const rows = modes.map((m) => {
    const r = result.modes[m]
    const [mode, ...env] = m.split('@')
    return [
      MODE_NAMES[mode](poolSize) + (env.length ? ` with ${env.map((e) => `\`${e}\``).join(' ')}` : ''),
      r.connections,
      r.calls,
      r.threads,
      mb(r.rss),
      m === 'bare' || bare === undefined ? '–' : `+${mb(r.rss - bare)}`,
      over(m, 'anon'),
      over(m, 'file'),
      m === 'bare' || bare === undefined || pg === undefined ? '–' : `${(((r.rss - bare) / (pg - bare)) * 100).toFixed(0)} %`,
    ]
  })
  return (
    table(
      ['process', 'connections open', 'calls served', 'threads', 'RSS', 'over bare Node', 'anonymous', 'file-backed', "share of pg's"],
      rows,
    ) +
    `\n\n${result.rounds} rounds of ${poolSize * 4} concurrent calls per process; median of ${result.reps}; ` +
    `load average (1 min) ${result.load.min.toFixed(2)}–${result.load.max.toFixed(2)} while it ran.`
  )
}
