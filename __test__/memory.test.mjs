// What the package holds in a process that uses it (issue 13, BENCHMARKS.md "Memory"):
// - a client on plain TCP with local storage never runs the TLS or S3 code, which the linker
//   lays out apart (link/cold.ld), so none of those pages is mapped into the process;
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
import { closeSync, openSync, readFileSync, readSync } from 'node:fs'
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

/** The loaded .node file's path, load address and `.text.cold` section (from its ELF headers). */
function coldSection() {
  const maps = readFileSync('/proc/self/maps', 'utf8').split('\n')
  const first = maps.find((line) => /storage-quota[^/]*\.node$/.test(line) && / 00000000 /.test(line))
  assert.ok(first, 'the addon is mapped')
  const path = first.slice(first.indexOf('/'))
  const base = BigInt(`0x${first.split('-')[0]}`)
  const elf = readFileSync(path)
  const shoff = Number(elf.readBigUInt64LE(0x28))
  const [size, count, names] = [elf.readUInt16LE(0x3a), elf.readUInt16LE(0x3c), elf.readUInt16LE(0x3e)]
  const header = (i) => shoff + i * size
  const strings = Number(elf.readBigUInt64LE(header(names) + 0x18))
  for (let i = 0; i < count; i++) {
    const nameAt = strings + elf.readUInt32LE(header(i))
    if (elf.toString('latin1', nameAt, elf.indexOf(0, nameAt)) !== '.text.cold') continue
    return { path, start: base + elf.readBigUInt64LE(header(i) + 0x10), bytes: Number(elf.readBigUInt64LE(header(i) + 0x20)) }
  }
  assert.fail(`${path} has no .text.cold section (link/cold.ld not applied)`)
}

/** How many 4 KB pages of [start, start + bytes) are mapped in this process (/proc/self/pagemap). */
function pagesPresent(start, bytes) {
  const pages = Math.floor(bytes / 4096)
  const entries = Buffer.alloc(pages * 8)
  const fd = openSync('/proc/self/pagemap', 'r')
  try {
    readSync(fd, entries, 0, entries.length, Number(start / 4096n) * 8)
  } finally {
    closeSync(fd)
  }
  let present = 0
  for (let i = 0; i < pages; i++) if (entries.readBigUInt64LE(i * 8) >> 63n) present++
  return present
}

test('a plain-TCP client with local storage maps none of the TLS and S3 code', { skip: process.platform !== 'linux' && 'Linux only' }, async () => {
  const db = await createTestDatabase('memory_cold')
  assert.doesNotMatch(db.url, /sslmode=(require|verify|prefer)/)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false, poolSize: 4, minConnections: 4 })
  try {
    await client.migrate()
    const user = 'cold_user'
    const project = await insertProject(db, user)
    await client.allocateProjectPath(user, project)
    await Promise.all(Array.from({ length: 64 }, (_, i) => (i % 2 ? client.checkQuota(user, 1) : client.recordUpload(user, project, 1, { uploadId: `c-${i}` }))))
    const held = await client.reserveUpload(user, project, 10)
    await client.commitUpload(user, held.reservationId, 5)
    await client.diskUsage(user, project)
    await client.getUsage(user)

    const { path, start, bytes } = coldSection()
    // The section's first and last blocks share page-cache folios (128 KB here) with the code
    // around it; everything between is TLS and S3 code only.
    const edge = 256 * 1024
    const present = pagesPresent(start + BigInt(edge), bytes - 2 * edge)
    assert.equal(present, 0, `${present} pages of TLS/S3 code mapped from ${path}`)
  } finally {
    await client.close()
  }
})

test('what a burst of calls freed is given back once the pool is idle', { skip: !glibc && 'glibc only' }, async () => {
  const db = await createTestDatabase('idle_trim')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false, poolSize: 16 })
  try {
    await client.migrate()
    const held = 'trim_held'
    const project = await insertProject(db, held)
    await client.recordUpload(held, project, 1)

    // One call stays in flight: its charge waits on the quota row another transaction holds.
    const lock = await holdRow(db, held)
    const pending = client.recordUpload(held, project, 1, { uploadId: 'in-flight' })
    await untilLockWaiters(db, 1)

    // The burst: rounds of 256 concurrent reads and charges over 16 users (more callers than
    // the pool has connections, as a busy app has), ~3 MB of [heap] freed when they answer.
    const users = Array.from({ length: 16 }, (_, i) => `trim_${i}`)
    const projects = await Promise.all(users.map((user) => insertProject(db, user)))
    let n = 0
    const call = () => {
      const i = n++
      const u = (i >> 1) % 16
      return i % 2 === 0 ? client.checkQuota(users[u], 1) : client.recordUpload(users[u], projects[u], 1, { uploadId: `burst-${i}` })
    }
    for (let round = 0; round < 5; round++) await Promise.all(Array.from({ length: 256 }, call))
    const busy = heapResident()

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

test('a thousand calls through the JS layer optimize none of its functions', async () => {
  const db = await createTestDatabase('memory_opt')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false, poolSize: 1 })
  await client.migrate()
  await client.close()
  const users = await Promise.all(Array.from({ length: 16 }, async (_, i) => [`opt_${i}`, await insertProject(db, `opt_${i}`)]))
  // TurboFan only (`--no-maglev`), so the answer does not depend on whether this Node version
  // enables Maglev, whose threshold is a fixed 100 calls of any function.
  const child = spawnSync(process.execPath, ['--trace-opt', '--no-maglev', fileURLToPath(new URL('./helpers/calls-child.mjs', import.meta.url))], {
    env: { ...process.env, DATABASE_URL: db.url, STORAGE_ROOT: db.storageRoot, USERS: JSON.stringify(users) },
    encoding: 'utf8',
  })
  assert.equal(child.status, 0, child.stderr)
  assert.match(child.stdout, /^calls 1280$/m)
  const optimized = [...child.stdout.matchAll(/completed optimizing [^<]*<JSFunction ([^ >]+)/g)].map((m) => m[1])
  assert.deepEqual(optimized, [], 'functions TurboFan optimized during 1,280 calls')
})
