#!/usr/bin/env node
// `node bench/pooler.mjs` (after `npm run build`): checkQuota and recordUpload through PgBouncer
// in transaction mode (a local one, Debian's 1.18, started here) against direct connections, and
// against `pg` through the same pooler (unnamed statements: named ones fail there). Short runs;
// the contenders alternate, the order rotating each repetition; medians are reported.
//
//   node bench/pooler.mjs [--reps=3] [--duration=1000] [--warmup=300] [--concurrency=1,16,64] [--pool-size=16]
import { mkdir, writeFile } from 'node:fs/promises'
import { Worker } from './lib/workers.mjs'
import { ADMIN_URL, createDatabase, dropDatabase, migrate, query, seed } from './lib/db.mjs'
import { fmtMs, fmtOps, fmtRatio, median, table } from './lib/stats.mjs'
import { startPgBouncer } from '../__test__/helpers/pgbouncer.mjs'
import { flags } from './lib/args.mjs'

const args = flags()
const reps = Number(args.reps ?? 3)
const durationMs = Number(args.duration ?? 1000)
const warmupMs = Number(args.warmup ?? 300)
const concurrencies = String(args.concurrency ?? '1,16,64').split(',').map(Number)
const poolSize = Number(args['pool-size'] ?? 16)
const users = 10_000
const log = (line) => process.stderr.write(`${line}\n`)

const db = await createDatabase('pooler')
const admin = new URL(ADMIN_URL)
const bouncer = await startPgBouncer({
  server: { host: admin.hostname, port: Number(admin.port || 5432), user: decodeURIComponent(admin.username || 'postgres') },
  poolMode: 'transaction',
  defaultPoolSize: poolSize,
  tag: 'bench-pgb',
  untilExit: true,
})
const CONTENDERS = [
  { label: 'ours, direct', contender: 'ours', url: db.url },
  { label: 'ours, PgBouncer', contender: 'ours', url: bouncer.url(db.name) },
  { label: 'pg (unnamed), PgBouncer', contender: 'pgunnamed', url: bouncer.url(db.name, { pooler: false }) },
  { label: 'pg (prepared), direct', contender: 'pg', url: db.url },
]
const workers = []
const results = []
try {
  await migrate(db)
  await seed(db, { users })
  for (const c of CONTENDERS) {
    const worker = new Worker(c.contender)
    workers.push(worker)
    await worker.open({ url: c.url, poolSize })
  }
  for (const op of ['checkQuota', 'recordUpload']) {
    for (const concurrency of concurrencies) {
      const spec = { op, concurrency, warmupMs, durationMs, users, hot: false, poolSize }
      const samples = CONTENDERS.map(() => [])
      for (let rep = 0; rep < reps; rep++) {
        for (let k = 0; k < CONTENDERS.length; k++) {
          const i = (k + rep) % CONTENDERS.length
          await query(db, 'VACUUM user_quotas')
          const result = await workers[i].run(spec)
          if (result.errors > 0) log(`  ${CONTENDERS[i].label}: ${result.errors} errors, first: ${result.firstError}`)
          samples[i].push(result)
        }
      }
      const row = {
        op,
        concurrency,
        contenders: CONTENDERS.map((c, i) => ({
          label: c.label,
          opsPerSec: median(samples[i].map((r) => r.opsPerSec)),
          p50: median(samples[i].map((r) => r.p50)),
          p99: median(samples[i].map((r) => r.p99)),
          errors: samples[i].reduce((n, r) => n + r.errors, 0),
        })),
      }
      results.push(row)
      log(`${op} c=${concurrency}: ${row.contenders.map((c) => `${c.label} ${fmtOps(c.opsPerSec)}/s`).join(', ')}`)
    }
  }
} finally {
  for (const worker of workers) await worker.close().catch(() => {})
  for (const worker of workers) worker.kill()
  await bouncer.stop()
  await dropDatabase(db)
}

const out = [
  `Pool ${poolSize} (PgBouncer default_pool_size ${poolSize}), ${users.toLocaleString('en-US')} users at random, ${reps} × ${durationMs} ms per cell, medians.`,
  '',
]
for (const op of ['checkQuota', 'recordUpload']) {
  out.push(`**${op}**`, '')
  out.push(
    table(
      ['callers', ...CONTENDERS.map((c) => `${c.label} ops/s (p50 / p99 ms)`), 'ours PgBouncer ÷ ours direct', 'ours PgBouncer ÷ pg PgBouncer'],
      results
        .filter((r) => r.op === op)
        .map((r) => [
          r.concurrency,
          ...r.contenders.map((c) => `${fmtOps(c.opsPerSec)} (${fmtMs(c.p50)} / ${fmtMs(c.p99)})${c.errors ? ` ⚠ ${c.errors} errors` : ''}`),
          fmtRatio(r.contenders[1].opsPerSec / r.contenders[0].opsPerSec),
          fmtRatio(r.contenders[1].opsPerSec / r.contenders[2].opsPerSec),
        ]),
    ),
    '',
  )
}
const markdown = out.join('\n')
process.stdout.write(`${markdown}\n`)
await mkdir(new URL('./results/', import.meta.url), { recursive: true })
const stamp = new Date().toISOString().replace(/[:.]/g, '-')
await writeFile(new URL(`./results/pooler-${stamp}.md`, import.meta.url), `${markdown}\n`)
await writeFile(new URL(`./results/pooler-${stamp}.json`, import.meta.url), JSON.stringify({ reps, durationMs, warmupMs, poolSize, results }, null, 2))
