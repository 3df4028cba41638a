import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createClient, formatBytes, quotaPercentage, quotaState } from '../index.js'
import { createTestDatabase, insertProject, quotaCounters, rejection } from './helpers/db.mjs'

const MB = 1024 * 1024
const db = await createTestDatabase('lifecycle')
const events = []
const client = createClient({
  databaseUrl: db.url,
  storageRoot: db.storageRoot,
  defaultQuotaBytes: 100 * MB,
  logger: (event, fields) => events.push({ event, ...fields }),
})
await client.migrate()
after(() => client.close())

const counters = (userId) => quotaCounters(db, userId)

async function writeFiles(dir, files) {
  for (const [name, bytes] of Object.entries(files)) {
    await mkdir(join(dir, name, '..'), { recursive: true })
    await writeFile(join(dir, name), Buffer.alloc(bytes, 7))
  }
}

test('deleting releases counted bytes, over quota too, and never goes below zero', async () => {
  const user = 'user_del'
  const project = await insertProject(db, user)
  await client.recordUpload(user, project, 60 * MB, { uploadId: 'big' })
  await client.recordUpload(user, project, 30 * MB, { uploadId: 'small' })
  await client.setQuotaLimit(user, 50 * MB, { changedBy: 'test', reason: 'downgrade' })
  assert.equal((await rejection(client.recordUpload(user, project, 1))).code, 'QUOTA_EXCEEDED', 'over quota: no new bytes')

  const byId = await client.recordDeletion(user, project, undefined, { uploadId: 'big' })
  assert.equal(byId.releasedBytes, 60 * MB)
  assert.equal(byId.usedBytes, 30 * MB)
  const again = await client.recordDeletion(user, project, undefined, { uploadId: 'big' })
  assert.equal(again.duplicate, true)
  assert.equal(again.usedBytes, 30 * MB, 'the same upload is released once')

  const tooMuch = await client.recordDeletion(user, project, 500 * MB, { deletionId: 'wipe' })
  assert.equal(tooMuch.releasedBytes, 30 * MB, 'never more than the project counted')
  assert.equal(tooMuch.usedBytes, 0)
  assert.deepEqual(await counters(user), { used: 0, reserved: 0, ledger: 0 })
  const retry = await client.recordDeletion(user, project, 500 * MB, { deletionId: 'wipe' })
  assert.equal(retry.duplicate, true)
  assert.equal(retry.releasedBytes, 30 * MB)
})

test('a deletion cannot release another project\'s or another user\'s bytes', async () => {
  const user = 'user_del2'
  const [a, b] = [await insertProject(db, user), await insertProject(db, user)]
  await client.recordUpload(user, a, 10 * MB, { uploadId: 'a1' })
  await client.recordUpload(user, b, 10 * MB)
  const released = await client.recordDeletion(user, b, 15 * MB)
  assert.equal(released.releasedBytes, 10 * MB, 'only what project b counted')
  const mismatch = await rejection(client.recordDeletion(user, b, undefined, { uploadId: 'a1' }))
  assert.equal(mismatch.code, 'CONFLICT')
  assert.equal(mismatch.reason, 'MISMATCH')
  assert.equal((await rejection(client.recordDeletion('user_other', a, 1))).code, 'FORBIDDEN')
  assert.equal((await counters(user)).used, 10 * MB)
})

test('an overwrite is charged the net change', async () => {
  const user = 'user_over'
  const project = await insertProject(db, user)
  await client.recordUpload(user, project, 95 * MB, { uploadId: 'v1' })
  const bigger = await client.recordUpload(user, project, 99 * MB, { uploadId: 'v2', replacesBytes: 95 * MB })
  assert.equal(bigger.netBytes, 4 * MB)
  assert.equal(bigger.replacedBytes, 95 * MB)
  assert.equal(bigger.usedBytes, 99 * MB)
  const tooBig = await rejection(client.recordUpload(user, project, 120 * MB, { uploadId: 'v3', replacesBytes: 99 * MB }))
  assert.equal(tooBig.code, 'QUOTA_EXCEEDED')
  assert.equal(tooBig.requestedBytes, 21 * MB)
  const smaller = await client.recordUpload(user, project, 10 * MB, { uploadId: 'v4', replacesBytes: 99 * MB })
  assert.equal(smaller.netBytes, -89 * MB)
  assert.deepEqual(await counters(user), { used: 10 * MB, reserved: 0, ledger: 10 * MB })
})

test('registerProject checks the quota, allocates the path and counts the initial size once', async () => {
  const user = 'user_reg'
  const project = await insertProject(db, user)
  const registered = await client.registerProject(user, project, { sizeBytes: 5 * MB })
  assert.equal(registered.countedBytes, 5 * MB)
  assert.equal(registered.path.path, `${db.storageRoot}/${user}/${project}/`)
  assert.ok((await stat(registered.path.path)).isDirectory())
  const twice = await client.registerProject(user, project, { sizeBytes: 5 * MB })
  assert.equal(twice.usedBytes, 5 * MB, 'registering again does not count again')
  const big = await insertProject(db, user)
  assert.equal((await rejection(client.registerProject(user, big, { sizeBytes: 96 * MB }))).code, 'QUOTA_EXCEEDED')
  const { rows } = await db.query('SELECT count(*)::int AS n FROM project_storage_paths WHERE project_id = $1', [big])
  assert.equal(rows[0].n, 0, 'a refused project gets no path')
})

test('copyProject copies the files and counts them; renaming never moves a path', async () => {
  const user = 'user_copy'
  const source = await insertProject(db, user, 'original')
  const dir = (await client.registerProject(user, source)).path.path
  await writeFiles(dir, { 'a.bin': 3 * MB, 'nested/b.bin': 2 * MB })
  await client.recordUpload(user, source, 5 * MB)
  await db.query(`UPDATE projects SET name = 'renamed' WHERE id = $1`, [source])
  assert.equal((await client.allocateProjectPath(user, source)).path, dir, 'editing a project keeps its path')

  const target = await insertProject(db, user, 'copy')
  const copied = await client.copyProject(user, source, target)
  assert.equal(copied.copiedBytes, 5 * MB)
  assert.equal(copied.usedBytes, 10 * MB)
  assert.equal(copied.path.path, `${db.storageRoot}/${user}/${target}/`)
  assert.deepEqual(await readFile(join(copied.path.path, 'nested/b.bin')), Buffer.alloc(2 * MB, 7))
  const again = await client.copyProject(user, source, target)
  assert.equal(again.duplicate, true)
  assert.deepEqual(await counters(user), { used: 10 * MB, reserved: 0, ledger: 10 * MB })
  const usage = await client.getUsage(user, { projects: true })
  assert.deepEqual(
    usage.projects.map((p) => [p.projectId, p.usedBytes]).sort(),
    [[source, 5 * MB], [target, 5 * MB]].sort(),
  )
})

test('a copy larger than the free space is refused with nothing copied or counted', async () => {
  const user = 'user_copybig'
  const source = await insertProject(db, user)
  const dir = (await client.registerProject(user, source)).path.path
  await writeFiles(dir, { 'huge.bin': 60 * MB })
  await client.recordUpload(user, source, 60 * MB)
  const target = await insertProject(db, user)
  const error = await rejection(client.copyProject(user, source, target))
  assert.equal(error.code, 'QUOTA_EXCEEDED')
  assert.equal(error.requestedBytes, 60 * MB)
  assert.deepEqual((await readdir(join(db.storageRoot, user))).sort(), [source], 'nothing copied, no directory made')
  const paths = await db.query('SELECT count(*)::int AS n FROM project_storage_paths WHERE project_id = $1', [target])
  assert.equal(paths.rows[0].n, 0, 'no path record for a refused copy')
  assert.deepEqual(await counters(user), { used: 60 * MB, reserved: 0, ledger: 60 * MB })
  assert.equal((await rejection(client.copyProject(user, source, randomUUID()))).code, 'NOT_FOUND')
  const foreign = await insertProject(db, 'user_someone')
  assert.equal((await rejection(client.copyProject(user, source, foreign))).code, 'FORBIDDEN')
})

test('removeProject releases its bytes, cancels its reservations and deletes its files', async () => {
  const user = 'user_remove'
  const project = await insertProject(db, user)
  const dir = (await client.registerProject(user, project, { sizeBytes: 4 * MB })).path.path
  await writeFiles(dir, { 'x.bin': 1000 })
  await client.reserveUpload(user, project, 2 * MB)
  const removed = await client.removeProject(user, project)
  assert.equal(removed.releasedBytes, 4 * MB)
  assert.equal(removed.cancelledReservations, 1)
  assert.equal(removed.usedBytes, 0)
  assert.equal(removed.reservedBytes, 0)
  await assert.rejects(stat(dir), { code: 'ENOENT' })
  assert.deepEqual(await counters(user), { used: 0, reserved: 0, ledger: 0 })
  // After the app deleted the row, a late removal still works from the ledger.
  await db.query('DELETE FROM projects WHERE id = $1', [project])
  assert.equal((await client.removeProject(user, project)).releasedBytes, 0)
})

test('setQuotaLimit is audited; a user over a lowered limit can read and delete but not add', async () => {
  const user = 'user_limit'
  const project = await insertProject(db, user)
  await client.recordUpload(user, project, 80 * MB)
  const up = await client.setQuotaLimit(user, 200 * MB, { changedBy: 'admin_1', reason: 'upgrade to pro' })
  assert.equal(up.limitBytes, 200 * MB)
  const down = await client.setQuotaLimit(user, 50 * MB, { changedBy: 'admin_2', reason: 'downgrade' })
  assert.equal(down.state, 'exceeded')
  assert.equal(down.percentUsed, 160)
  const { rows } = await db.query(
    `SELECT old_limit_bytes::float8 AS old, new_limit_bytes::float8 AS new, changed_by, reason
       FROM quota_limit_changes WHERE user_id = $1 ORDER BY id`,
    [user],
  )
  assert.deepEqual(rows, [
    { old: 100 * MB, new: 200 * MB, changed_by: 'admin_1', reason: 'upgrade to pro' },
    { old: 200 * MB, new: 50 * MB, changed_by: 'admin_2', reason: 'downgrade' },
  ])
  assert.equal((await client.checkQuota(user, 1)).allowed, false)
  assert.equal((await rejection(client.reserveUpload(user, project, 1))).code, 'QUOTA_EXCEEDED')
  assert.equal((await client.recordDeletion(user, project, 10 * MB)).usedBytes, 70 * MB)
  assert.ok(events.some((e) => e.event === 'limit_changed' && e.userId === user))
  assert.ok(events.some((e) => e.event === 'quota_refused' && e.userId === user && e.operation === 'reserveUpload'))
})

test('getUsage: numbers, state thresholds and text from the same numbers', async () => {
  const user = 'user_usage'
  const project = await insertProject(db, user)
  const fresh = await client.getUsage(user)
  assert.equal(fresh.state, 'normal')
  assert.equal(fresh.summary, '0 B of 100 MB used (0.00 %)')
  for (const [bytes, state] of [[75 * MB, 'nearing'], [15 * MB, 'critical'], [10 * MB, 'exceeded']]) {
    await client.recordUpload(user, project, bytes)
    const usage = await client.getUsage(user)
    assert.equal(usage.state, state)
    assert.equal(usage.state, quotaState(usage.percentUsed))
    assert.equal(usage.percentUsed, quotaPercentage(usage.usedBytes + usage.reservedBytes, usage.limitBytes))
    assert.equal(usage.usedText, formatBytes(usage.usedBytes))
  }
  const last = await client.getUsage(user)
  assert.deepEqual(
    [last.usedText, last.limitText, last.remainingText, last.summary],
    ['100 MB', '100 MB', '0 B', '100 MB of 100 MB used (100.00 %)'],
  )
})

test('checkQuota with a list of sizes says whether all fit, what is missing and which fit', async () => {
  const user = 'user_batch'
  const project = await insertProject(db, user)
  await client.recordUpload(user, project, 90 * MB)
  const check = await client.checkQuota(user, [4 * MB, 8 * MB, 5 * MB, 1 * MB])
  assert.equal(check.allowed, false)
  assert.equal(check.requestedBytes, 18 * MB)
  assert.equal(check.missingBytes, 8 * MB)
  assert.deepEqual(check.fits, [true, false, true, true])
  assert.equal((await client.checkQuota(user, [1 * MB, 2 * MB])).allowed, true)
  assert.equal((await rejection(client.checkQuota(user, []))).code, 'INVALID_ARGUMENT')
})

test('reconcile finds and fixes a counter changed behind the library\'s back, and sees the disk', async () => {
  const user = 'user_recon'
  const project = await insertProject(db, user)
  const dir = (await client.registerProject(user, project)).path.path
  await writeFiles(dir, { 'f.bin': 3 * MB })
  await client.recordUpload(user, project, 2 * MB)
  await db.query(`UPDATE user_quotas SET used_bytes = 1234 WHERE user_id = $1`, [user])

  const report = await client.reconcile(user, { disk: true })
  assert.equal(report.checkedUsers, 1)
  assert.equal(report.driftedUsers, 1)
  const [drift] = report.users
  assert.equal(drift.usedBytes, 1234)
  assert.equal(drift.ledgerBytes, 2 * MB)
  assert.equal(drift.driftBytes, 1234 - 2 * MB)
  assert.equal(drift.fixed, false)
  assert.deepEqual(
    drift.projects.map((p) => [p.projectId, p.ledgerBytes, p.diskBytes, p.diskDriftBytes]),
    [[project, 2 * MB, 3 * MB, 1 * MB]],
  )
  assert.equal((await counters(user)).used, 1234, 'reporting alone changes nothing')
  assert.ok(events.some((e) => e.event === 'drift_found' && e.userId === user && e.fixed === false))

  const fixed = await client.reconcile(user, { fix: true })
  assert.equal(fixed.fixedUsers, 1)
  assert.deepEqual(await counters(user), { used: 2 * MB, reserved: 0, ledger: 2 * MB })
  const clean = await client.reconcile({ fix: true })
  assert.equal(clean.driftedUsers, 0, 'after the fix every user agrees with the ledger')
})

test('reconcile is safe while uploads go on', async () => {
  const user = 'user_recon_live'
  const project = await insertProject(db, user)
  const uploads = Array.from({ length: 60 }, (_, i) => client.recordUpload(user, project, 1000 + i))
  const reconciles = Array.from({ length: 10 }, () => client.reconcile(user, { fix: true }))
  await Promise.all([...uploads, ...reconciles])
  const total = Array.from({ length: 60 }, (_, i) => 1000 + i).reduce((a, b) => a + b, 0)
  assert.deepEqual(await counters(user), { used: total, reserved: 0, ledger: total })
})

test('shadow mode counts past the limit and reports would-be refusals; off mode counts nothing', async () => {
  const shadowEvents = []
  const shadow = createClient({
    databaseUrl: db.url,
    storageRoot: db.storageRoot,
    defaultQuotaBytes: 10 * MB,
    mode: 'shadow',
    logger: (event, fields) => shadowEvents.push({ event, ...fields }),
  })
  const off = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 10 * MB, mode: 'off', logger: false })
  try {
    const user = 'user_shadow'
    const project = await insertProject(db, user)
    const check = await shadow.checkQuota(user, 15 * MB)
    assert.deepEqual([check.allowed, check.wouldRefuse, check.mode], [true, true, 'shadow'])
    const recorded = await shadow.recordUpload(user, project, 15 * MB)
    assert.deepEqual([recorded.counted, recorded.wouldRefuse, recorded.usedBytes], [true, true, 15 * MB])
    const held = await shadow.reserveUpload(user, project, MB)
    assert.equal(held.wouldRefuse, true)
    assert.ok(shadowEvents.filter((e) => e.event === 'shadow_refusal').length >= 3)

    const offUser = 'user_off'
    const offProject = await insertProject(db, offUser)
    const offRecorded = await off.recordUpload(offUser, offProject, 50 * MB)
    assert.deepEqual([offRecorded.counted, offRecorded.wouldRefuse, offRecorded.usedBytes], [false, true, 0])
    assert.equal((await off.checkQuota(offUser, 50 * MB)).allowed, true)
    assert.equal(await counters(offUser), undefined, 'off mode writes nothing')
  } finally {
    await Promise.all([shadow.close(), off.close()])
  }
})

test('a rollout percentage enforces a stable share of users and shadows the rest', async () => {
  const partial = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: MB, rolloutPercent: 50, logger: false })
  try {
    const modes = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => (await partial.checkQuota(`user_roll${i}`, 2 * MB)).mode),
    )
    const enforced = modes.filter((m) => m === 'enforce').length
    assert.ok(enforced > 5 && enforced < 35, `${enforced} of 40 enforced`)
    const again = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => (await partial.checkQuota(`user_roll${i}`, 2 * MB)).mode),
    )
    assert.deepEqual(again, modes, 'the same users every time')
  } finally {
    await partial.close()
  }
})
