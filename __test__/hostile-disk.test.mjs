// Hostile trees, concurrent retries and cut connections against copyProject, removeProject and
// diskUsage on a real filesystem. Every test compares a sentinel tree OUTSIDE the storage root
// byte for byte before and after, and the counters with the files on disk.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, execFileSync } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rename, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { createClient } from '../index.js'
import { createTestDatabase, insertProject, quotaCounters, rejection } from './helpers/db.mjs'

// The cut connections are logged by the addon (`connection_lost`); this file is about disks.
process.env.STORAGE_QUOTA_LOG = 'off'

const MB = 1024 * 1024
const db = await createTestDatabase('hostile_disk')
const options = { databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 100 * MB, logger: false }
const client = createClient(options)
const second = createClient(options)
// One connection: a copy must never need a second one while it holds its lock.
const single = createClient({ ...options, poolSize: 1 })
await client.migrate()
after(() => Promise.all([client.close(), second.close(), single.close()]))

// The sentinel: a directory outside the storage root that links will point into.
const outside = await mkdtemp(join(tmpdir(), 'sq-outside-'))
after(() => rm(outside, { recursive: true, force: true }))
const SECRET = randomBytes(4096)
await writeFile(join(outside, 'secret'), SECRET)
await mkdir(join(outside, 'dir'))
await writeFile(join(outside, 'dir', 'inner'), 'outside directory file')

/** Every entry below `dir`: files with their bytes, links with their targets, directories. */
async function snapshot(dir) {
  const seen = {}
  async function visit(path, rel) {
    for (const name of (await readdir(path)).sort()) {
      const full = join(path, name)
      const key = rel ? `${rel}/${name}` : name
      const info = await lstat(full)
      if (info.isSymbolicLink()) seen[key] = `link → ${await readlink(full)}`
      else if (info.isDirectory()) {
        seen[key] = 'dir'
        await visit(full, key)
      } else if (info.isFile()) seen[key] = (await readFile(full)).toString('base64')
      else seen[key] = 'special'
    }
  }
  await visit(dir, '')
  return seen
}
const outsideBefore = await snapshot(outside)
const assertOutsideUntouched = async () => assert.deepEqual(await snapshot(outside), outsideBefore, 'nothing outside the root changed')

/** Links of every kind in `dir`: to an outside file, an outside directory, dangling, a loop. */
async function plantLinks(dir) {
  await symlink(join(outside, 'secret'), join(dir, 'to-file'))
  await symlink(join(outside, 'dir'), join(dir, 'to-dir'))
  await symlink(join(outside, 'missing'), join(dir, 'dangling'))
  await symlink(join(dir, 'loop'), join(dir, 'loop'))
}

async function writeFiles(dir, files) {
  for (const [name, bytes] of Object.entries(files)) {
    await mkdir(join(dir, name, '..'), { recursive: true })
    await writeFile(join(dir, name), Buffer.alloc(bytes, 7))
  }
}

async function projectWithFiles(user, files) {
  const project = await insertProject(db, user)
  const dir = (await client.allocateProjectPath(user, project)).path
  await writeFiles(dir, files)
  const total = Object.values(files).reduce((a, b) => a + b, 0)
  if (total > 0) await client.recordUpload(user, project, total, { uploadId: `seed-${project}` })
  return { project, dir, total }
}

const pathRecords = async (project) =>
  (await db.query('SELECT count(*)::int AS n FROM project_storage_paths WHERE project_id = $1', [project])).rows[0].n

/** Names in the user's directory other than project directories: staging leftovers. */
const leftovers = async (user) => (await readdir(join(db.storageRoot, user))).filter((name) => name.startsWith('.'))

async function assertCountedEqualsDisk(user) {
  const counters = await quotaCounters(db, user)
  assert.equal(counters.used, counters.ledger, 'counter = ledger')
  assert.equal(counters.reserved, 0, 'nothing left reserved')
  const { rows } = await db.query('SELECT project_id FROM project_storage_paths WHERE user_id = $1', [user])
  let onDisk = 0
  for (const { project_id } of rows) onDisk += (await client.diskUsage(user, project_id)).bytes
  assert.equal(counters.used, onDisk, 'bytes counted = bytes of the files on disk')
}

test('links of every kind at every level of the source are skipped and reported, never followed', async () => {
  const user = 'user_src_links'
  const { project: source, dir } = await projectWithFiles(user, { 'one.bin': 1000, 'a/b/two.bin': 24 })
  for (const level of [dir, join(dir, 'a'), join(dir, 'a/b')]) await plantLinks(level)
  execFileSync('mkfifo', [join(dir, 'a', 'fifo')])

  const usage = await client.diskUsage(user, source)
  assert.deepEqual([usage.bytes, usage.files, usage.skipped], [1024, 2, 13])
  const target = await insertProject(db, user)
  const copied = await client.copyProject(user, source, target)
  assert.deepEqual(
    [copied.copiedBytes, copied.files, copied.skipped, copied.duplicate],
    [1024, 2, 13, false],
    '4 links × 3 levels and a FIFO skipped and counted',
  )
  const copy = await snapshot(copied.path.path)
  assert.deepEqual(Object.keys(copy).sort(), ['a', 'a/b', 'a/b/two.bin', 'one.bin'], 'only files and directories copied')
  await assertOutsideUntouched()
  await assertCountedEqualsDisk(user)

  // Removing unlinks the links themselves, never what they point to.
  await client.removeProject(user, source)
  await assert.rejects(lstat(dir), { code: 'ENOENT' })
  await assertOutsideUntouched()
  await assertCountedEqualsDisk(user)
})

test('links planted in or at the target are never written through; nothing is counted', async () => {
  const user = 'user_tgt_links'
  const { project: source } = await projectWithFiles(user, { 'to-file': 3000, 'd/x.bin': 2000 })
  const before = await quotaCounters(db, user)

  // A link where the source has a file, and one where it has a directory.
  for (const plant of [
    (dir) => symlink(join(outside, 'secret'), join(dir, 'to-file')),
    (dir) => symlink(join(outside, 'dir'), join(dir, 'd')),
    (dir) => plantLinks(dir),
  ]) {
    const target = await insertProject(db, user)
    const dir = (await client.allocateProjectPath(user, target)).path
    await plant(dir)
    const planted = await snapshot(dir)
    const error = await rejection(client.copyProject(user, source, target))
    assert.equal(error.code, 'CONFLICT')
    assert.equal(error.reason, 'TARGET_NOT_EMPTY')
    assert.deepEqual(await snapshot(dir), planted, 'the target is left as it was')
    await assertOutsideUntouched()
  }

  // The target directory itself a link to an outside directory, made before any allocation.
  const target = await insertProject(db, user)
  await symlink(join(outside, 'dir'), join(db.storageRoot, user, target))
  assert.equal((await rejection(client.copyProject(user, source, target))).code, 'UNSAFE_PATH')
  assert.equal(await pathRecords(target), 0, 'no path record for a refused copy')
  await assertOutsideUntouched()

  assert.deepEqual(await quotaCounters(db, user), before, 'no copy was counted')
  assert.deepEqual(await leftovers(user), [])
})

test('a source directory or file swapped for a link while a copy runs never brings outside bytes in', async () => {
  const user = 'user_swap'
  const files = {}
  for (let d = 0; d < 30; d++) for (let f = 0; f < 20; f++) files[`d${d}/f${f}.bin`] = 4096
  const { project: source, dir } = await projectWithFiles(user, files)
  // Swap every directory for a link to the outside directory and back, and every file of the
  // last directory for a link to the outside file and back, as long as the copy runs
  // (bounded: 200 rounds).
  const target = await insertProject(db, user)
  let settled = false
  const copy = client.copyProject(user, source, target).finally(() => { settled = true })
  let swaps = 0
  for (let round = 0; round < 200 && !settled; round++) {
    for (let d = 0; d < 30 && !settled; d++) {
      const path = join(dir, `d${d}`)
      await rename(path, `${path}.aside`)
      await symlink(join(outside, 'dir'), path)
      await rm(path)
      await rename(`${path}.aside`, path)
      const file = join(dir, 'd29', `f${d % 20}.bin`)
      await rename(file, `${file}.aside`)
      await symlink(join(outside, 'secret'), file)
      await rm(file)
      await rename(`${file}.aside`, file)
      swaps += 2
    }
  }
  const copied = await copy
  assert.ok(swaps > 0, 'swapped while the copy ran')
  const copyTree = await snapshot(copied.path.path)
  for (const [name, value] of Object.entries(copyTree)) {
    assert.ok(!value.startsWith('link'), `${name} is not a link`)
    assert.ok(!name.endsWith('inner'), `${name} does not come from the outside directory`)
    assert.notEqual(value, SECRET.toString('base64'), `${name} does not hold the outside file's bytes`)
  }
  assert.equal(copied.copiedBytes, (await client.diskUsage(user, target)).bytes)
  await assertOutsideUntouched()
  await assertCountedEqualsDisk(user)
})

test('concurrent and repeated copies into one new project resolve once: duplicate or KEY_REUSED, never DB_ERROR', async () => {
  const user = 'user_concurrent'
  const { project: source, total } = await projectWithFiles(user, { 'a.bin': 300_000, 'n/b.bin': 200_000, 'n/m/c.bin': 1 })
  const { project: other } = await projectWithFiles(user, { 'z.bin': 10 })
  for (let round = 0; round < 4; round++) {
    const target = await insertProject(db, user)
    const calls = [client, second, single, second, single].map((c) => c.copyProject(user, source, target))
    const results = await Promise.allSettled(calls)
    for (const r of results) assert.equal(r.status, 'fulfilled', r.reason?.code ?? '')
    const answers = results.map((r) => r.value)
    assert.equal(answers.filter((a) => !a.duplicate).length, 1, 'exactly one call copied')
    for (const a of answers) assert.deepEqual([a.copiedBytes, a.files], [total, 3], 'every answer has the original outcome')
    assert.equal((await client.diskUsage(user, target)).bytes, total, 'the copy holds every file')
    const again = await second.copyProject(user, source, target)
    assert.deepEqual([again.duplicate, again.copiedBytes], [true, total])
    const error = await rejection(client.copyProject(user, other, target))
    assert.deepEqual([error.code, error.reason], ['CONFLICT', 'KEY_REUSED'])
    await assertCountedEqualsDisk(user)
  }
  // Two sources raced into one new project: one wins, the other source is KEY_REUSED.
  const target = await insertProject(db, user)
  const mixed = await Promise.allSettled(
    [source, other, source, other].map((from, i) => [client, second][i % 2].copyProject(user, from, target)),
  )
  const won = mixed.filter((r) => r.status === 'fulfilled').map((r) => r.value)
  const lost = mixed.filter((r) => r.status === 'rejected').map((r) => r.reason)
  assert.equal(won.length, 2)
  assert.equal(won.filter((a) => !a.duplicate).length, 1)
  for (const e of lost) assert.deepEqual([e.code, e.reason], ['CONFLICT', 'KEY_REUSED'])
  assert.equal((await client.diskUsage(user, target)).bytes, won[0].copiedBytes)
  assert.deepEqual(await leftovers(user), [])
  await assertCountedEqualsDisk(user)
})

test('a copy removed with removeProject is copied again, not answered as a duplicate', async () => {
  const user = 'user_recopy'
  const { project: source, total } = await projectWithFiles(user, { 'a.bin': 4000, 'd/b.bin': 96 })
  const target = await insertProject(db, user)
  assert.equal((await client.copyProject(user, source, target)).duplicate, false)
  await client.removeProject(user, target)
  await assertCountedEqualsDisk(user)
  const again = await second.copyProject(user, source, target)
  assert.deepEqual([again.duplicate, again.copiedBytes], [false, total])
  assert.equal((await client.diskUsage(user, target)).bytes, total)
  await assertCountedEqualsDisk(user)
})

test('a copy whose call died is settled by the next call: undone when uncounted, kept when counted', async () => {
  const user = 'user_died'
  const { project: source, total } = await projectWithFiles(user, { 'a.bin': 3000, 'd/b.bin': 1000 })
  const userDir = join(db.storageRoot, user)
  /** What a call that died after `stage` left: its claim, its reservation, its directories. */
  async function deadCall(stage) {
    const target = await insertProject(db, user)
    const token = randomUUID()
    await client.reserveUpload(user, target, total, { reservationId: token })
    await writeFiles(join(userDir, `.copy-${token}`), { 'a.bin': 3000, 'half.bin': 10 })
    const staged = await stat(join(userDir, `.copy-${token}`), { bigint: true })
    await db.query(
      `INSERT INTO quota_project_copies (user_id, project_id, source_project_id, token, dir_dev, dir_ino)
       VALUES ($1, $2, $3, $4, $5, $6)`,
      [user, target, source, token, staged.dev.toString(), staged.ino.toString()],
    )
    if (stage !== 'staged') await rename(join(userDir, `.copy-${token}`), join(userDir, target))
    if (stage === 'committed') await client.commitUpload(user, token, 3010)
    return target
  }

  for (const stage of ['staged', 'renamed']) {
    const target = await deadCall(stage)
    const copied = await second.copyProject(user, source, target)
    assert.deepEqual([copied.duplicate, copied.copiedBytes, copied.files], [false, total, 2], stage)
    assert.deepEqual(Object.keys(await snapshot(join(userDir, target))).sort(), ['a.bin', 'd', 'd/b.bin'], `${stage}: the dead call's files are gone`)
    assert.deepEqual(await leftovers(user), [])
    await assertCountedEqualsDisk(user)
  }
  // Counted before its call died: the copy stands and later calls answer with it.
  const target = await deadCall('committed')
  const kept = await second.copyProject(user, source, target)
  assert.deepEqual([kept.duplicate, kept.copiedBytes], [true, 3010])
  assert.equal((await client.diskUsage(user, target)).bytes, 3010)
  assert.deepEqual((await client.copyProject(user, source, target)).duplicate, true)
  await assertCountedEqualsDisk(user)
})

test('a refused copy leaves nothing — no files, no directory, no path record, no charge — however many ask at once', async () => {
  const user = 'user_refused'
  const { project: source } = await projectWithFiles(user, { 'big.bin': 60 * MB })
  const before = await quotaCounters(db, user)
  const target = await insertProject(db, user)
  const results = await Promise.allSettled([client, second, client].map((c) => c.copyProject(user, source, target)))
  for (const r of results) assert.equal(r.reason?.code, 'QUOTA_EXCEEDED')
  await assert.rejects(lstat(join(db.storageRoot, user, target)), { code: 'ENOENT' })
  assert.equal(await pathRecords(target), 0)
  assert.deepEqual(await quotaCounters(db, user), before)
  assert.deepEqual(await leftovers(user), [])
  await assertCountedEqualsDisk(user)
})

test('a connection cut in the middle of a copy: the target shows nothing until complete, the call undoes only its own, a retry copies once', async () => {
  const user = 'user_cut'
  const files = {}
  for (let d = 0; d < 40; d++) for (let f = 0; f < 50; f++) files[`d${d}/f${f}.bin`] = 2048
  const { project: source, total } = await projectWithFiles(user, files)
  const name = `sq-cut-copy-${randomBytes(3).toString('hex')}`
  const cutting = createClient({ ...options, applicationName: name })
  const admin = new pg.Client({ connectionString: db.directUrl })
  await admin.connect()
  try {
    const target = await insertProject(db, user)
    const targetDir = join(db.storageRoot, user, target)
    let settled = false
    const copy = cutting.copyProject(user, source, target).then(
      (value) => ({ value }),
      (error) => ({ error }),
    ).finally(() => { settled = true })
    // Wait for the copy to be under way: files being written somewhere in the user's directory.
    let seenInTarget = 0
    let underWay = false
    while (!settled && !underWay) {
      const names = await readdir(join(db.storageRoot, user)).catch(() => [])
      for (const n of names.filter((n) => n !== source)) {
        const inside = await readdir(join(db.storageRoot, user, n)).catch(() => [])
        if (inside.length > 0) underWay = true
      }
      seenInTarget = (await readdir(targetDir).catch(() => [])).length
    }
    assert.ok(underWay, 'the copy was caught under way')
    assert.equal(seenInTarget, 0, 'the target shows nothing while the copy runs')
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [name])
    const outcome = await copy
    if (outcome.error) {
      assert.equal(outcome.error.code, 'DB_UNAVAILABLE')
      assert.deepEqual(await readdir(targetDir).catch(() => []), [], 'the failed call removed its files')
      assert.equal(await pathRecords(target), 0, 'and its path record')
    } else {
      assert.equal(outcome.value.copiedBytes, total)
    }
    assert.deepEqual(await leftovers(user), [])
    await assertCountedEqualsDisk(user)

    const retry = await cutting.copyProject(user, source, target)
    assert.equal(retry.duplicate, !outcome.error)
    assert.equal(retry.copiedBytes, total)
    assert.equal((await cutting.diskUsage(user, target)).bytes, total)
    await assertCountedEqualsDisk(user)
    await assertOutsideUntouched()
  } finally {
    await admin.end()
    await cutting.close()
  }
})

// macOS has no /proc; an empty one here stands in for it. Needs a private mount namespace
// (root, or unprivileged user namespaces); skipped where that is not possible.
const noProc = (() => {
  try {
    execFileSync('unshare', ['-m', 'sh', '-c', 'mount -t tmpfs none /proc && test ! -e /proc/self'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
})()

/** Runs helpers/disk-child.mjs after `setup` (shell) in a mount namespace of its own. */
async function inNamespace(setup, env) {
  const child = fileURLToPath(new URL('./helpers/disk-child.mjs', import.meta.url))
  const { stdout } = await promisify(execFile)(
    'unshare',
    ['-m', 'sh', '-c', `${setup} && exec "$0" "$1"`, process.execPath, child],
    { env: { ...process.env, DATABASE_URL: db.url, STORAGE_ROOT: db.storageRoot, ...env } },
  )
  return JSON.parse(stdout)
}

test('without /proc (as on macOS) copy, diskUsage and removeProject work the same', { skip: !noProc && 'cannot hide /proc here (needs unshare -m)' }, async () => {
  const user = 'user_no_proc'
  const { project: source, dir, total } = await projectWithFiles(user, { 'a.bin': 5000, 'n/b.bin': 3000 })
  const target = await insertProject(db, user)
  const result = await inNamespace('mount -t tmpfs none /proc', { USER_ID: user, SOURCE: source, TARGET: target })
  assert.deepEqual(result, {
    source: { bytes: total, skipped: 0 },
    copy: { copiedBytes: total, skipped: 0 },
    target: total,
    remove: total,
  })
  await assert.rejects(lstat(dir), { code: 'ENOENT' }, 'the source directory was removed')
  await assertCountedEqualsDisk(user)
})

test('a filesystem mounted inside a project is never entered: not measured, copied or deleted', { skip: !noProc && 'cannot mount here (needs unshare -m)' }, async () => {
  const user = 'user_mount'
  const { project: source, dir, total } = await projectWithFiles(user, { 'a.bin': 7000 })
  await mkdir(join(dir, 'mnt'))
  const target = await insertProject(db, user)
  const mounted = join(dir, 'mnt', 'theirs')
  const result = await inNamespace(`mount -t tmpfs none '${join(dir, 'mnt')}' && echo data > '${mounted}'`, {
    USER_ID: user,
    SOURCE: source,
    TARGET: target,
    WATCH: mounted,
  })
  assert.deepEqual(result, {
    source: { bytes: total, skipped: 1 },
    copy: { copiedBytes: total, skipped: 1 },
    target: total,
    remove: { error: 'STORAGE_ERROR' },
    watched: true,
  })
  await assertOutsideUntouched()
})
