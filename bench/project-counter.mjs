// What the per-project usage counter (migration 0003: a statement-level trigger on quota_ledger)
// costs a charge: pgbench recordUpload (sweep + charge, as the addon sends them) on two databases
// migrated and seeded alike, one with the trigger dropped. Rounds alternate which goes first.
//   node bench/project-counter.mjs
import { createDatabase, dropDatabase, migrate, seed, query } from './lib/db.mjs'
import { pgbench } from './lib/pgbench.mjs'
const users = 1000
const dbs = {}
for (const name of ['with', 'without']) {
  const db = await createDatabase(`trg_${name}`)
  await migrate(db)
  await seed(db, { users })
  if (name === 'without') await query(db, 'DROP TRIGGER quota_ledger_project_usage ON quota_ledger')
  dbs[name] = db
}
const results = { with: [], without: [] }
for (let round = 0; round < 3; round++) {
  for (const name of round % 2 ? ['without', 'with'] : ['with', 'without']) {
    for (const concurrency of [1, 16]) {
      const r = await pgbench({ url: dbs[name].url, op: 'recordUpload', concurrency, poolSize: 16, warmupMs: 1000, durationMs: 4000, users, hot: false })
      results[name].push({ concurrency, opsPerSec: Math.round(r.opsPerSec), p50: r.p50.toFixed(2) })
    }
  }
}
console.log(JSON.stringify(results))
for (const db of Object.values(dbs)) await dropDatabase(db)
