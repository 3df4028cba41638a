// Throughput and latency of each operation, ours against pg, postgres.js and the pgbench
// ceiling, measured in one run: the contenders alternate (the order rotates each repetition)
// and the medians of the repetitions are reported.
import { Worker } from './lib/workers.mjs'
import { pgbench } from './lib/pgbench.mjs'
import { createDatabase, dropDatabase, migrate, query, seed } from './lib/db.mjs'
import { dbWorkMark, dbWorkSince } from './lib/dbwork.mjs'
import { fmtMs, fmtOps, fmtRatio, median, table } from './lib/stats.mjs'

const fmtBytes = (x) => (Number.isFinite(x) ? String(Math.round(x)) : '–')

export const NODE_CONTENDERS = ['ours', 'pg', 'postgresjs']
export const LABELS = { ours: 'ours', pg: 'pg', postgresjs: 'postgres.js', pgbench: 'pgbench' }

export async function throughput(settings, log) {
  const { ops, concurrencies, distributions, contenders, reps, warmupMs, durationMs, users, poolSize } = settings
  const db = await createDatabase('tp')
  const workers = []
  try {
    await migrate(db)
    // One earlier upload and one settled reservation per user: the tables the calls read are
    // analyzed non-empty, as in an app in use (see seed()).
    await seed(db, { users, ledgerPerUser: 1, reservationsPerUser: 1 })
    for (const name of contenders.filter((c) => c !== 'pgbench')) {
      const worker = new Worker(name)
      workers.push(worker)
      await worker.open({ url: db.url, poolSize })
    }
    const results = []
    for (const op of ops) {
      for (const distribution of distributions) {
        for (const concurrency of concurrencies) {
          const spec = { op, concurrency, warmupMs, durationMs, users, hot: distribution === 'hot', poolSize }
          const samples = Object.fromEntries(contenders.map((c) => [c, []]))
          for (let rep = 0; rep < reps; rep++) {
            const order = contenders.map((_, i) => contenders[(i + rep) % contenders.length])
            for (const name of order) {
              await query(db, 'VACUUM user_quotas')
              const mark = await dbWorkMark(db)
              const result =
                name === 'pgbench'
                  ? await pgbench({ url: db.url, ...spec })
                  : await workers.find((w) => w.name === name).run(spec)
              Object.assign(result, await dbWorkSince(db, mark, result.completed))
              if (result.errors > 0) log(`  ${name}: ${result.errors} errors, first: ${result.firstError}`)
              samples[name].push(result)
            }
          }
          const row = { op, distribution, concurrency, contenders: {} }
          for (const name of contenders) {
            const s = samples[name]
            row.contenders[name] = {
              opsPerSec: median(s.map((r) => r.opsPerSec)),
              p50: median(s.map((r) => r.p50)),
              p99: median(s.map((r) => r.p99)),
              errors: s.reduce((n, r) => n + r.errors, 0),
              dbCpuMsPer1k: median(s.map((r) => r.dbCpuMsPer1k)),
              walBytesPerOp: median(s.map((r) => r.walBytesPerOp)),
              statementsPerOp: median(s.map((r) => r.statementsPerOp)),
              samples: s.map((r) => Math.round(r.opsPerSec)),
            }
          }
          results.push(row)
          log(
            `${op} ${distribution} c=${concurrency}: ` +
              contenders.map((c) => `${LABELS[c] ?? c} ${fmtOps(row.contenders[c].opsPerSec)}/s p99 ${fmtMs(row.contenders[c].p99)}`).join(', '),
          )
        }
      }
    }
    return results
  } finally {
    for (const worker of workers) await worker.close()
    for (const worker of workers) worker.kill()
    await dropDatabase(db)
  }
}

const ratio = (row, a, b) => row.contenders[a]?.opsPerSec / row.contenders[b]?.opsPerSec

export function throughputMarkdown(results, contenders) {
  const out = []
  for (const op of [...new Set(results.map((r) => r.op))]) {
    const rows = results.filter((r) => r.op === op)
    const others = contenders.filter((c) => c !== 'ours')
    out.push(`#### \`${op}\` — ops/s (median of repetitions) and ours ÷ each\n`)
    out.push(
      table(
        ['users', 'conc.', ...contenders.map((c) => LABELS[c] ?? c), ...(contenders.includes('ours') ? others.map((c) => `ours/${LABELS[c] ?? c}`) : [])],
        rows.map((r) => [
          r.distribution,
          r.concurrency,
          ...contenders.map((c) => fmtOps(r.contenders[c].opsPerSec)),
          ...(contenders.includes('ours') ? others.map((c) => fmtRatio(ratio(r, 'ours', c))) : []),
        ]),
      ),
    )
    // One column per contender, one cell per row and contender.
    const perContender = (title, cell) => {
      out.push(`\n#### \`${op}\` — ${title}\n`)
      out.push(
        table(
          ['users', 'conc.', ...contenders.map((c) => LABELS[c] ?? c)],
          rows.map((r) => [r.distribution, r.concurrency, ...contenders.map((c) => cell(r.contenders[c]))]),
        ),
      )
    }
    perContender('latency p50 / p99 (ms)', (m) => `${fmtMs(m.p50)} / ${fmtMs(m.p99)}`)
    perContender(
      'database work per operation: PostgreSQL CPU ms per 1,000 ops / WAL bytes per op',
      (m) => `${fmtMs(m.dbCpuMsPer1k)} / ${fmtBytes(m.walBytesPerOp)}`,
    )
    if (rows.some((r) => contenders.some((c) => Number.isFinite(r.contenders[c].statementsPerOp)))) {
      perContender('statements per operation (pg_stat_statements; BEGIN and COMMIT count)', (m) =>
        Number.isFinite(m.statementsPerOp) ? m.statementsPerOp.toFixed(2) : '—',
      )
    }
    out.push('')
  }
  return out.join('\n')
}
