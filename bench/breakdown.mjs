#!/usr/bin/env node
// Where one operation's time goes, per contender: runs it in a closed loop (contenders one after
// another, in the order given, so `ours,old,ours,old` alternates an A/B) and prints the
// operations per second with the CPU each thread of the contender's process and each of its
// PostgreSQL backends used per second of the window (from /proc/<pid>/task/*/schedstat, so Linux
// only), then the statements that took the database's time (pg_stat_statements, which must be
// loaded: `shared_preload_libraries=pg_stat_statements`).
//
//   node bench/breakdown.mjs [--op=recordUpload] [--concurrency=16] [--duration=4000]
//                            [--contenders=ours,ours@STORAGE_QUOTA_BENCH_PACKAGE=/other/index.js]
import { readdirSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { Worker } from './lib/workers.mjs'
import { ADMIN_URL, createDatabase, dropAll, dropDatabase, migrate, seed } from './lib/db.mjs'
import { fmtOps, table } from './lib/stats.mjs'
import { flags } from './lib/args.mjs'

const require = createRequire(import.meta.url)
const pg = require('pg')
const args = flags()
const op = args.op ?? 'recordUpload'
const concurrency = Number(args.concurrency ?? 16)
const durationMs = Number(args.duration ?? 4000)
const contenders = String(args.contenders ?? 'ours,pg').split(',')
const users = 10_000

/** Nanoseconds of CPU per thread name of process `pid` (threads of one name summed). */
function threadsCpu(pid) {
  const out = {}
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const name = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim()
      out[name] = (out[name] ?? 0) + Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0])
    } catch {
      // The thread ended.
    }
  }
  return out
}

const db = await createDatabase('breakdown')
try {
  await migrate(db)
  await seed(db, { users, ledgerPerUser: 1, reservationsPerUser: 1 })
  const stats = new pg.Client({ connectionString: ADMIN_URL })
  await stats.connect()
  await stats.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements')
  const backends = async () =>
    (
      await stats.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'bench-%'",
        [db.name],
      )
    ).rows.map((r) => r.pid)
  for (const name of contenders) {
    const worker = new Worker(name)
    await worker.open({ url: db.url, poolSize: 16 })
    await worker.run({ op, concurrency, warmupMs: 300, durationMs: 1000, users, hot: false })
    const pids = await backends()
    const before = { node: threadsCpu(worker.pid), pg: pids.map((p) => threadsCpu(p)) }
    await stats.query('SELECT pg_stat_statements_reset()')
    const result = await worker.run({ op, concurrency, warmupMs: 0, durationMs, users, hot: false, cpu: true })
    const after = { node: threadsCpu(worker.pid), pg: pids.map((p) => threadsCpu(p)) }
    const perSecond = (ns) => `${(ns / 1e6 / (durationMs / 1000)).toFixed(0)} ms/s`
    const threads = Object.keys(after.node)
      .map((t) => [t, after.node[t] - (before.node[t] ?? 0)])
      .filter(([, ns]) => ns > 0.005 * durationMs * 1e6)
      .map(([t, ns]) => `${t} ${perSecond(ns)}`)
    const busy = after.pg
      .map((cpu, i) => Object.values(cpu).reduce((a, b) => a + b, 0) - Object.values(before.pg[i]).reduce((a, b) => a + b, 0))
      .filter((ns) => ns > 0.005 * durationMs * 1e6)
      .sort((a, b) => b - a)
    const { rows } = await stats.query(
      `SELECT calls, round(mean_exec_time::numeric, 3) AS mean_ms, round(total_exec_time::numeric, 1) AS total_ms,
              rows, wal_bytes, left(regexp_replace(query, '\\s+', ' ', 'g'), 80) AS statement
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)
        ORDER BY total_exec_time DESC LIMIT 8`,
      [db.name],
    )
    console.log(
      `\n${name}: ${fmtOps(result.opsPerSec)} ${op}/s at ${concurrency} callers; Node CPU ${result.cpuUsPerOp.toFixed(0)} µs per op; ` +
        `threads: ${threads.join(', ')}; busy backends (${busy.length} of ${pids.length}): ${busy.map(perSecond).join(', ')}\n`,
    )
    console.log(table(['calls', 'mean ms', 'total ms', 'rows', 'WAL bytes', 'statement'], rows.map((r) => Object.values(r).map(String))))
    await worker.close()
    worker.kill()
  }
  await stats.end()
} finally {
  await dropDatabase(db)
  await dropAll()
}
