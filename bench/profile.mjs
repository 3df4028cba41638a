#!/usr/bin/env node
// What each contender's backends wait on: samples pg_stat_activity every few milliseconds
// while one scenario runs, and prints the share of samples per state/wait event, with the
// CPU time the contender's Node process used per operation.
//
//   node bench/profile.mjs [--op=recordUpload] [--users=random|hot] [--concurrency=16]
//                          [--duration=3000] [--contenders=ours,pg,postgresjs]
import { createRequire } from 'node:module'
import { Worker } from './lib/workers.mjs'
import { createDatabase, dropAll, dropDatabase, migrate, seed } from './lib/db.mjs'
import { fmtOps, table } from './lib/stats.mjs'
import { flags } from './lib/args.mjs'

const require = createRequire(import.meta.url)
const pg = require('pg')
const args = flags()
const op = args.op ?? 'recordUpload'
const hot = (args.users ?? 'random') === 'hot'
const concurrency = Number(args.concurrency ?? 16)
const durationMs = Number(args.duration ?? 3000)
const contenders = String(args.contenders ?? 'ours,pg,postgresjs').split(',')
const users = 10_000

const db = await createDatabase('prof')
const rows = []
try {
  await migrate(db)
  await seed(db, { users, ledgerPerUser: 1, reservationsPerUser: 1 })
  const sampler = new pg.Client({ connectionString: db.url })
  await sampler.connect()
  for (const name of contenders) {
    const worker = new Worker(name)
    await worker.open({ url: db.url, poolSize: 16 })
    const counts = new Map()
    let samples = 0
    let sampling = true
    const sample = (async () => {
      while (sampling) {
        const { rows: states } = await sampler.query(
          `SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w, state FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'bench-%'`,
        )
        for (const s of states) {
          const key = s.state === 'active' ? `active ${s.w}` : `${s.state} ${s.w}`
          counts.set(key, (counts.get(key) ?? 0) + 1)
        }
        samples++
        await new Promise((r) => setTimeout(r, 5))
      }
    })()
    const result = await worker.run({ op, concurrency, warmupMs: 300, durationMs, users, hot, cpu: true })
    sampling = false
    await sample
    await worker.close()
    worker.kill()
    const total = [...counts.values()].reduce((a, b) => a + b, 0)
    const top = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 6)
    rows.push([
      name,
      fmtOps(result.opsPerSec),
      result.cpuUsPerOp ? `${result.cpuUsPerOp.toFixed(0)} µs` : '–',
      top.map(([k, n]) => `${k} ${((n / total) * 100).toFixed(0)} %`).join('; '),
    ])
    process.stderr.write(`${name}: ${fmtOps(result.opsPerSec)}/s, ${samples} samples\n`)
  }
  await sampler.end()
} finally {
  await dropDatabase(db)
  await dropAll()
}
console.log(`${op}, ${hot ? 'one hot user' : 'random users'}, concurrency ${concurrency}, ${durationMs} ms\n`)
console.log(table(['contender', 'ops/s', 'Node CPU per op', 'backend connections by state and wait event (share of samples)'], rows))
