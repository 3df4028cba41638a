#!/usr/bin/env node
// What one hand-over to the addon costs, apart from the calls in it: groups of callers in a
// closed loop, each group handing `size` checkQuota calls to the addon at once
// (`NativeClient.checkQuotaMany`, the path of the calls made in one turn of the event loop) and
// waiting for all their answers. Checks per second for groups × size = 1×16, 2×8, 4×4, 1×32 and
// 2×16, repeated; from 1×16 against 1×32 follow the fixed cost of a hand-over and the cost of
// each call in it.
//
//   node bench/handover.mjs [--reps=3] [--duration=1000]
//   SHAPES='[[1,16]]' node bench/handover.mjs --reps=1 --duration=15000   (other shapes, e.g. one long run to profile)
import { createRequire } from 'node:module'
import { createDatabase, dropDatabase, migrate, seed } from './lib/db.mjs'
import { userId } from './lib/sql.mjs'
import { flags } from './lib/args.mjs'

const require = createRequire(import.meta.url)
const { NativeClient } = require('../binding.js')
const { checkQuotaMany } = require('../lib/packed.js')
const args = flags()
const reps = Number(args.reps ?? 3)
const durationMs = Number(args.duration ?? 1000)
const users = 10_000
const SHAPES = process.env.SHAPES ? JSON.parse(process.env.SHAPES) : [[1, 16], [2, 8], [4, 4], [1, 32], [2, 16]]

const db = await createDatabase('handover')
try {
  await migrate(db)
  await seed(db, { users })
  const native = new NativeClient({ databaseUrl: db.url, storageRoot: db.storageRoot, poolSize: 16 })
  const someone = () => userId(1 + Math.floor(Math.random() * users))
  async function run(groups, size, ms) {
    let checks = 0
    const end = Date.now() + ms
    await Promise.all(
      Array.from({ length: groups }, async () => {
        while (Date.now() < end) {
          await checkQuotaMany(native, Array.from({ length: size }, () => [someone(), [1]]))
          checks += size
        }
      }),
    )
    return (checks / ms) * 1000
  }
  await run(1, 16, 500)
  const results = new Map(SHAPES.map(([g, s]) => [`${g}×${s}`, []]))
  for (let rep = 0; rep < reps; rep++) {
    for (const [g, s] of SHAPES) results.get(`${g}×${s}`).push(await run(g, s, durationMs))
  }
  native.close()
  console.log(`checkQuota checks/s by groups × calls per hand-over (median of ${reps} × ${durationMs} ms; all runs)\n`)
  console.log('| groups × size | checks/s | µs per hand-over (one group\'s cycle) | runs |\n| --- | --- | --- | --- |')
  for (const [shape, runs] of results) {
    const sorted = [...runs].sort((a, b) => a - b)
    const median = sorted[Math.floor(sorted.length / 2)]
    const [g, s] = shape.split('×').map(Number)
    const perHandOver = (1e6 / median) * s * g
    console.log(`| ${shape} | ${Math.round(median).toLocaleString('en-US')} | ${perHandOver.toFixed(0)} | ${runs.map((r) => Math.round(r)).join(', ')} |`)
  }
} finally {
  await dropDatabase(db)
}
