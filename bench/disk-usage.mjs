// diskUsage on a project of many files, side by side with plain Node `fs` walks (and `du`, when
// present) over the same tree in the same run. Results: bench/disk-usage.md.
//
//   npm run build && node bench/disk-usage.mjs [files=100000] [runs=7]
//
// Needs no database: diskUsage reads only the disk.
import { execFileSync } from 'node:child_process'
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { lstat, readdir } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { createClient } from '../index.js'

const FILES = Number(process.argv[2] ?? 100_000)
const RUNS = Number(process.argv[3] ?? 7)
const USER = 'user_bench'
const PROJECT = '3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b'

/** 100 directories of 10 subdirectories, the files spread over them; sizes 0..4095 bytes. */
function makeTree(dir, files) {
  let seed = 42
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
  const buffer = Buffer.alloc(4096, 1)
  let bytes = 0
  for (let i = 0; i < files; i++) {
    const sub = join(dir, `d${i % 100}`, `s${Math.floor(i / 100) % 10}`)
    if (i < 1000) mkdirSync(sub, { recursive: true })
    const size = Math.floor(random() * 4096)
    writeFileSync(join(sub, `f${i}.bin`), buffer.subarray(0, size))
    bytes += size
  }
  return bytes
}

/** Baseline 1: the usual async walk, readdir(withFileTypes) + lstat, one directory's entries at a time in parallel. */
async function nodeAsyncWalk(dir) {
  let bytes = 0
  let files = 0
  async function visit(path) {
    const entries = await readdir(path, { withFileTypes: true })
    await Promise.all(
      entries.map(async (entry) => {
        const child = join(path, entry.name)
        if (entry.isDirectory()) return visit(child)
        if (entry.isFile()) {
          const info = await lstat(child)
          bytes += info.size
          files += 1
        }
      }),
    )
  }
  await visit(dir)
  return { bytes, files }
}

/** Baseline 2: the same walk with the sync calls (no promise overhead, blocks the event loop). */
function nodeSyncWalk(dir) {
  let bytes = 0
  let files = 0
  const stack = [dir]
  while (stack.length) {
    const path = stack.pop()
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      const child = join(path, entry.name)
      if (entry.isDirectory()) stack.push(child)
      else if (entry.isFile()) {
        bytes += lstatSync(child).size
        files += 1
      }
    }
  }
  return { bytes, files }
}

function duBytes(dir) {
  try {
    return Number(execFileSync('du', ['-s', '-b', dir], { encoding: 'utf8' }).split('\t')[0])
  } catch {
    return null
  }
}

async function measure(name, run, check) {
  const times = []
  let result
  for (let i = 0; i < RUNS; i++) {
    const start = performance.now()
    result = await run()
    times.push(performance.now() - start)
  }
  check(result)
  times.sort((a, b) => a - b)
  return { name, median: times[Math.floor(times.length / 2)], min: times[0] }
}

const root = mkdtempSync(join(tmpdir(), 'sq-bench-usage-'))
const client = createClient({ databaseUrl: 'postgres://unused@127.0.0.1:1/none', storageRoot: root })
try {
  const dir = join(root, USER, PROJECT)
  mkdirSync(dir, { recursive: true })
  const made = performance.now()
  const expected = makeTree(dir, FILES)
  console.error(`made ${FILES} files (${expected} bytes) in ${((performance.now() - made) / 1000).toFixed(1)} s`)
  const same = (r) => {
    if (r.bytes !== expected || r.files !== FILES) throw new Error(`wrong answer: ${JSON.stringify(r)}`)
  }
  // One untimed pass each so every contender starts from the same warm page cache.
  await client.diskUsage(USER, PROJECT)
  nodeSyncWalk(dir)
  const results = [
    await measure('storage-quota diskUsage()', () => client.diskUsage(USER, PROJECT), same),
    await measure('Node fs/promises walk (readdir + lstat)', () => nodeAsyncWalk(dir), same),
    await measure('Node fs sync walk (readdirSync + lstatSync)', () => nodeSyncWalk(dir), same),
  ]
  if (duBytes(dir) !== null) {
    results.push(
      await measure('`du -s -b` (GNU coreutils, subprocess)', () => duBytes(dir), (bytes) => {
        if (!(bytes >= expected)) throw new Error(`du says ${bytes}`)
      }),
    )
  }
  const ours = results[0].median
  console.log(`node ${process.version}, ${cpus().length} CPUs (${cpus()[0].model}), ${FILES} files in ${1000} directories, warm page cache, ${RUNS} runs each`)
  console.log('')
  console.log('| walk | median ms | min ms | vs diskUsage |')
  console.log('|---|---:|---:|---:|')
  for (const r of results) {
    console.log(`| ${r.name} | ${r.median.toFixed(1)} | ${r.min.toFixed(1)} | ${(r.median / ours).toFixed(2)}× |`)
  }
} finally {
  await client.close()
  rmSync(root, { recursive: true, force: true })
}
