// A Node process holding one driver's pool with every connection open, for the memory table:
// `node --expose-gc rss-child.mjs <bare|addon|ours|ours-zod|pg|postgresjs> <url> <poolSize> [rounds]`.
// Every contender serves the same calls: `rounds` rounds of `poolSize × 4` concurrent calls,
// checkQuota and recordUpload alternating over 64 users, with the logic of ./contenders.mjs
// (the same SQL for pg and postgres.js). Reports its memory over IPC after a GC, then waits
// for the parent to count its connections and end it (run alone, it prints the report).
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import v8 from 'node:v8'

import { CONTENDERS } from './contenders.mjs'
import { projectId, userId } from './sql.mjs'

const require = createRequire(import.meta.url)
const [mode, url, poolSizeArg, roundsArg] = process.argv.slice(2)
const poolSize = Number(poolSizeArg)
const rounds = Number(roundsArg ?? 20)
const applicationName = `rss-${mode}`

async function open() {
  if (mode === 'bare') return { checkQuota: async () => {}, recordUpload: async () => {}, close: async () => {} }
  if (mode === 'addon') {
    // The native binding alone (it takes a list of sizes and validates in Rust only).
    const client = new (require('../../binding.js').NativeClient)({ databaseUrl: url, poolSize, minConnections: poolSize, applicationName })
    return {
      checkQuota: (user, bytes) => client.checkQuota(user, [bytes]),
      recordUpload: (user, project, bytes, uploadId) => client.recordUpload(user, project, bytes, { uploadId }),
      close: () => client.close(),
    }
  }
  // `ours-zod` also touches an exported Zod schema, which loads Zod: the cost an app pays when
  // it uses the schemas itself.
  if (mode === 'ours-zod') void require('../../index.js').UserIdSchema
  const contender = mode === 'ours-zod' ? 'ours' : mode
  // Our pool sends concurrent calls of different users together, so a few connections serve
  // them all: `minConnections` opens the other ones, as pg and postgres.js open theirs.
  const minConnections = contender === 'ours' ? poolSize : undefined
  return CONTENDERS[contender]({ url, poolSize, applicationName, minConnections })
}

/** Resident memory split as the kernel counts it, and the process's thread count. */
function breakdown() {
  const kb = (text, field) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN) * 1024
  const rollup = readFileSync('/proc/self/smaps_rollup', 'utf8')
  const status = readFileSync('/proc/self/status', 'utf8')
  const usage = process.memoryUsage()
  return {
    rss: usage.rss,
    anon: kb(rollup, 'Anonymous'),
    file: kb(rollup, 'Rss') - kb(rollup, 'Anonymous'),
    threads: Number(/^Threads:\s+(\d+)/m.exec(status)[1]),
    heapUsed: usage.heapUsed,
    v8Physical: v8.getHeapStatistics().total_physical_size,
    external: usage.external,
  }
}

// BENCH_WARM_JIT=1 (for every mode, bare included): a hot loop first makes V8 optimize code,
// as an app's own code does long before a quota call, so V8's optimizing compiler is resident
// in every process and "added" counts only what the driver itself brings.
if (process.env.BENCH_WARM_JIT === '1') {
  const step = (x) => (x * 31 + 7) % 1_000_003
  let s = 1
  for (let i = 0; i < 5_000_000; i++) s = step(s)
  globalThis.benchWarm = s
}
const driver = await open()
let n = 0
const call = () => {
  const i = n++
  const u = userId(1 + ((i >> 1) % 64))
  if (i % 2 === 0) return driver.checkQuota(u, 1)
  return driver.recordUpload(u, projectId(u), 1, `rss-${process.pid}-${i}`)
}
// Enough concurrent calls, for long enough, that every pooled connection opens and is used.
for (let round = 0; round < rounds; round++) {
  await Promise.all(Array.from({ length: poolSize * 4 }, call))
}
globalThis.gc?.()
await new Promise((resolve) => setTimeout(resolve, 300))
globalThis.gc?.()
const report = { calls: n, ...breakdown() }
if (process.send) {
  process.send(report)
  process.on('message', async () => {
    await driver.close()
    process.exit(0)
  })
} else {
  // Run on its own (under a profiler such as heaptrack): print the report, wait
  // RSS_CHILD_HOLD_MS (to inspect /proc/PID), then close.
  console.log(JSON.stringify({ pid: process.pid, ...report }))
  await new Promise((resolve) => setTimeout(resolve, Number(process.env.RSS_CHILD_HOLD_MS ?? 0)))
  await driver.close()
}
