// What the package holds in a process that uses it (issue 13, BENCHMARKS.md "Memory"):
// - a client on plain TCP with local storage never runs the TLS or S3 code, which the linker
//   lays out apart (link/cold.ld), so none of those pages is mapped into the process, and the
//   code it does run lies together (link/hot.ld), so little else is mapped around it;
// - the JS layer's per-call path is light enough that a thousand calls optimize none of it, so
//   V8's optimizing compiler (~4 MB of node's code) is not paged in for them;
// - memory a burst of calls freed goes back to the system once no call runs (glibc on Linux:
//   malloc_trim once no call has run for a moment). Measured on this process's `[heap]` mapping,
//   glibc's main arena, where the arguments of every call are allocated on the JS thread (V8's
//   own heap is mapped elsewhere, so its collections do not move this number). A call held in
//   flight while the burst ends keeps the pool busy, so the measurement right after the burst
//   cannot race the trim.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { createClient } from '../index.js'
import { createTestDatabase, holdRow, insertProject, untilLockWaiters } from './helpers/db.mjs'

const glibc = process.platform === 'linux' && Boolean(process.report?.getReport().header.glibcVersionRuntime)
const MB = 2 ** 20

/** Resident bytes of this process's `[heap]` mapping (glibc's main arena). */
function heapResident() {
  const smaps = readFileSync('/proc/self/smaps', 'utf8')
  const at = smaps.indexOf(' [heap]\n')
  if (at < 0) return 0
  return Number(/^Rss:\s+(\d+) kB/m.exec(smaps.slice(at))[1]) * 1024
}

/** Resolves once `condition()` holds; fails after `ms` with `message()`. Polls, no fixed sleep. */
async function until(condition, ms, message) {
  const deadline = performance.now() + ms
  while (!condition()) {
    if (performance.now() > deadline) assert.fail(message())
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

test('what a burst of calls freed is given back once the pool is idle', { skip: !glibc && 'glibc only' }, async () => {
  const db = await createTestDatabase('idle_trim')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false, poolSize: 16 })
  try {
    await client.migrate()
    const held = 'trim_held'
    const project = await insertProject(db, held)
    await client.recordUpload(held, project, 1)

    // One call stays in flight: its reservation waits on the quota row another transaction
    // holds (a reservation: uploads, in their own batches, must not queue behind it).
    const lock = await holdRow(db, held)
    const pending = client.reserveUpload(held, project, 1)
    await untilLockWaiters(db, 1)

    // The burst: rounds of 512 concurrent calls over 16 users (more callers than the pool has
    // connections, as a busy app has), each handed to the addon on its own (checkQuota and
    // recordUpload calls of one event-loop turn are handed over together, and leave too little
    // on the JS thread's arena to measure). Repeated until [heap] grew by 2.5 MB: where the
    // arena already had room, a burst can leave it as it was, and then there is nothing to see.
    const users = Array.from({ length: 16 }, (_, i) => `trim_${i}`)
    const projects = await Promise.all(users.map((user) => insertProject(db, user)))
    let n = 0
    const call = () => {
      const i = n++
      const u = (i >> 1) % 16
      return i % 2 === 0 ? client.getUsage(users[u]) : client.allocateProjectPath(users[u], projects[u])
    }
    const before = heapResident()
    let busy = before
    for (let burst = 0; burst < 5 && busy < before + 2.5 * MB; burst++) {
      for (let round = 0; round < 5; round++) await Promise.all(Array.from({ length: 512 }, call))
      busy = heapResident()
    }
    assert.ok(busy >= before + 2.5 * MB, `bursts grew [heap] only from ${(before / MB).toFixed(1)} to ${(busy / MB).toFixed(1)} MB`)

    await lock.release()
    await pending
    await until(
      () => heapResident() < busy - 2 * MB,
      5_000,
      () => `[heap] still holds ${(heapResident() / MB).toFixed(1)} MB after the pool went idle (${(busy / MB).toFixed(1)} MB right after the burst)`,
    )
  } finally {
    await client.close()
  }
})

/** Runs helpers/calls-child.mjs (20 rounds of 64 calls) on a fresh database with `flags`. */
async function callsChild(tag, flags = [], env = {}) {
  const db = await createTestDatabase(tag)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false, poolSize: 1 })
  await client.migrate()
  await client.close()
  const users = await Promise.all(Array.from({ length: 16 }, async (_, i) => [`${tag}_${i}`, await insertProject(db, `${tag}_${i}`)]))
  const child = spawnSync(process.execPath, [...flags, fileURLToPath(new URL('./helpers/calls-child.mjs', import.meta.url))], {
    env: { ...process.env, DATABASE_URL: db.url, STORAGE_ROOT: db.storageRoot, USERS: JSON.stringify(users), ...env },
    encoding: 'utf8',
  })
  assert.equal(child.status, 0, child.stderr)
  const report = JSON.parse(child.stdout.split('\n').findLast((line) => line.startsWith('{')))
  assert.equal(report.calls, 1280)
  return { report, stdout: child.stdout }
}

test('a thousand calls through the JS layer optimize none of its functions', async () => {
  // TurboFan only (`--no-maglev`), so the answer does not depend on whether this Node version
  // enables Maglev, whose threshold is a fixed 100 calls of any function.
  const { stdout } = await callsChild('memory_opt', ['--trace-opt', '--no-maglev'])
  const optimized = [...stdout.matchAll(/completed optimizing [^<]*<JSFunction ([^ >]+)/g)].map((m) => m[1])
  assert.deepEqual(optimized, [], 'functions TurboFan optimized during 1,280 calls')
})

test("serving calls on plain TCP with local storage maps the request path's code, not the rest", { skip: process.platform !== 'linux' && 'Linux only' }, async () => {
  const { report } = await callsChild('memory_code', [], { MAPPED: '1' })
  // The TLS and S3 code (link/cold.ld) is never run, so none of its pages is mapped.
  assert.notEqual(report.coldPages, null, `${report.path} has no .text.cold section (link/cold.ld not applied)`)
  assert.equal(report.coldPages, 0, `${report.coldPages} pages of TLS/S3 code mapped from ${report.path}`)
  // The functions the request path runs lie together (link/hot.ld): ~1.2–1.5 MB of the code is
  // mapped from a file the page cache holds in small blocks, up to 2.04 MB seen right after a
  // fresh build (a newly written file is cached in larger blocks, each mapped whole), where it
  // was 2.9–3.15 MB with them scattered through 5.5 MB.
  assert.ok(report.codeBytes < 2.5 * MB, `${(report.codeBytes / MB).toFixed(2)} MB of ${report.path}'s code mapped`)
})
