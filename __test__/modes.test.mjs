// Every rollout mode means the same for every call (README, "Rollout modes"): `off` never counts
// or refuses new bytes, `shadow` counts and never refuses (and logs what enforce would have
// refused), `enforce` refuses exactly what does not fit. One test per operation, each over the
// three modes, all against the same 10 KB limit with a 50 KB request.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createClient } from '../index.js'
import { createTestDatabase, insertProject, quotaCounters, rejection } from './helpers/db.mjs'

const KB = 1024
const LIMIT = 10 * KB
const BIG = 50 * KB
const db = await createTestDatabase('modes')
const events = []
const clients = {}
for (const mode of ['enforce', 'shadow', 'off']) {
  clients[mode] = createClient({
    databaseUrl: db.url,
    storageRoot: db.storageRoot,
    defaultQuotaBytes: LIMIT,
    mode,
    logger: (event, fields) => events.push({ event, mode, ...fields }),
  })
}
await clients.enforce.migrate()
after(() => Promise.all(Object.values(clients).map((c) => c.close())))

const MODES = ['enforce', 'shadow', 'off']
let n = 0
/** A fresh user and project; the user's quota row exists (0 used) so counters read numbers. */
async function fresh() {
  const user = `user_mode${++n}`
  const project = await insertProject(db, user)
  await clients.enforce.setQuotaLimit(user, LIMIT)
  return { user, project }
}
const counters = async (user) => {
  const c = await quotaCounters(db, user)
  return { used: c.used, reserved: c.reserved }
}
const shadowLogged = (operation, userId) =>
  events.some((e) => e.event === 'shadow_refusal' && e.operation === operation && e.userId === userId)

test('checkQuota: enforce refuses, shadow and off allow and say enforce would refuse', async () => {
  for (const mode of MODES) {
    const { user } = await fresh()
    const check = await clients[mode].checkQuota(user, BIG)
    assert.deepEqual([check.allowed, check.wouldRefuse, check.mode], [mode !== 'enforce', true, mode], mode)
    assert.deepEqual(await counters(user), { used: 0, reserved: 0 }, `${mode}: a check writes nothing`)
  }
})

test('recordUpload: enforce refuses, shadow counts past the limit, off counts nothing', async () => {
  const expected = { enforce: null, shadow: BIG, off: 0 }
  for (const mode of MODES) {
    const { user, project } = await fresh()
    const call = clients[mode].recordUpload(user, project, BIG, { uploadId: 'u1' })
    if (mode === 'enforce') assert.equal((await rejection(call)).code, 'QUOTA_EXCEEDED')
    else {
      const r = await call
      assert.deepEqual([r.counted, r.wouldRefuse, r.usedBytes, r.mode], [mode === 'shadow', true, expected[mode], mode], mode)
    }
    assert.deepEqual(await counters(user), { used: expected[mode] ?? 0, reserved: 0 }, mode)
    if (mode === 'shadow') assert.ok(shadowLogged('recordUpload', user))
  }
})

test('recordUpload with replacesBytes: the same rule for the growth of an overwrite', async () => {
  for (const mode of MODES) {
    const { user, project } = await fresh()
    await clients.enforce.recordUpload(user, project, 4 * KB, { uploadId: 'old' })
    const call = clients[mode].recordUpload(user, project, BIG, { uploadId: 'new', replacesBytes: 4 * KB })
    if (mode === 'enforce') {
      assert.equal((await rejection(call)).code, 'QUOTA_EXCEEDED')
      assert.deepEqual(await counters(user), { used: 4 * KB, reserved: 0 })
    } else {
      const r = await call
      assert.equal(r.wouldRefuse, true, mode)
      // shadow: the new size replaces the old; off: no new bytes, the replaced ones released.
      assert.deepEqual(await counters(user), { used: mode === 'shadow' ? BIG : 0, reserved: 0 }, mode)
    }
  }
})

test('reserveUpload: enforce refuses, shadow holds past the limit, off holds nothing', async () => {
  for (const mode of MODES) {
    const { user, project } = await fresh()
    const call = clients[mode].reserveUpload(user, project, BIG)
    if (mode === 'enforce') assert.equal((await rejection(call)).code, 'QUOTA_EXCEEDED')
    else {
      const r = await call
      assert.deepEqual([r.wouldRefuse, r.mode, r.reservedBytes], [true, mode, mode === 'shadow' ? BIG : 0], mode)
    }
    assert.deepEqual(await counters(user), { used: 0, reserved: mode === 'shadow' ? BIG : 0 }, mode)
    if (mode === 'shadow') assert.ok(shadowLogged('reserveUpload', user))
  }
})

test('commitUpload larger than its reservation: enforce refuses, shadow counts, off counts no new bytes', async () => {
  for (const mode of MODES) {
    const { user, project } = await fresh()
    const held = await clients[mode].reserveUpload(user, project, 2 * KB)
    const call = clients[mode].commitUpload(user, held.reservationId, BIG)
    if (mode === 'enforce') {
      const error = await rejection(call)
      assert.equal(error.code, 'QUOTA_EXCEEDED')
      assert.equal(error.requestedBytes, BIG - 2 * KB, 'the extra bytes')
      assert.deepEqual(await counters(user), { used: 0, reserved: 2 * KB }, 'nothing changed')
    } else {
      const r = await call
      assert.deepEqual([r.status, r.wouldRefuse, r.mode], ['committed', true, mode], mode)
      assert.deepEqual(await counters(user), { used: mode === 'shadow' ? BIG : 0, reserved: 0 }, mode)
    }
    if (mode === 'shadow') assert.ok(shadowLogged('commitUpload', user))
  }
})

test('off mode: a reservation over the limit is neither counted nor refused, nor is its commit', async () => {
  const { user, project } = await fresh()
  const held = await clients.off.reserveUpload(user, project, 5 * LIMIT)
  assert.equal(held.reservedBytes, 0)
  const committed = await clients.off.commitUpload(user, held.reservationId)
  assert.equal(committed.status, 'committed')
  assert.deepEqual(await counters(user), { used: 0, reserved: 0 })
})

test('a reservation held in enforce and committed in shadow or off: held bytes stay counted', async () => {
  for (const mode of ['shadow', 'off']) {
    const { user, project } = await fresh()
    const held = await clients.enforce.reserveUpload(user, project, 8 * KB)
    const r = await clients[mode].commitUpload(user, held.reservationId, BIG)
    assert.equal(r.status, 'committed')
    assert.deepEqual(await counters(user), { used: mode === 'shadow' ? BIG : 8 * KB, reserved: 0 }, mode)
  }
})

test('cancelUpload gives the held bytes back in every mode', async () => {
  for (const mode of MODES) {
    const { user, project } = await fresh()
    const held = await clients[mode].reserveUpload(user, project, 3 * KB)
    const r = await clients[mode].cancelUpload(user, held.reservationId)
    assert.equal(r.status, 'cancelled')
    assert.deepEqual(await counters(user), { used: 0, reserved: 0 }, mode)
  }
})

test('recordDeletion releases in every mode, over the limit too', async () => {
  for (const mode of MODES) {
    const { user, project } = await fresh()
    await clients.enforce.recordUpload(user, project, 8 * KB, { uploadId: 'f' })
    await clients.enforce.setQuotaLimit(user, 1 * KB)
    const r = await clients[mode].recordDeletion(user, project, 8 * KB, { deletionId: 'd' })
    assert.equal(r.releasedBytes, 8 * KB, mode)
    assert.deepEqual(await counters(user), { used: 0, reserved: 0 }, mode)
  }
})

test('registerProject with a size: enforce refuses, shadow counts, off counts nothing', async () => {
  for (const mode of MODES) {
    const { user } = await fresh()
    const project = await insertProject(db, user)
    const call = clients[mode].registerProject(user, project, { sizeBytes: BIG })
    if (mode === 'enforce') assert.equal((await rejection(call)).code, 'QUOTA_EXCEEDED')
    else {
      const r = await call
      assert.equal(r.countedBytes, mode === 'shadow' ? BIG : 0, mode)
    }
    assert.deepEqual(await counters(user), { used: mode === 'shadow' ? BIG : 0, reserved: 0 }, mode)
  }
})

test('copyProject: enforce refuses, shadow counts the copy past the limit, off counts nothing', async () => {
  for (const mode of MODES) {
    const { user, project: source } = await fresh()
    const dir = await clients.enforce.allocateProjectPath(user, source)
    await writeFile(join(dir.path, 'data.bin'), Buffer.alloc(BIG, 1))
    const target = await insertProject(db, user)
    const call = clients[mode].copyProject(user, source, target)
    if (mode === 'enforce') assert.equal((await rejection(call)).code, 'QUOTA_EXCEEDED')
    else assert.equal((await call).copiedBytes, BIG, mode)
    assert.deepEqual(await counters(user), { used: mode === 'shadow' ? BIG : 0, reserved: 0 }, mode)
  }
})

test('reconcile({ fix }) sets the counters from the ledger in every mode, past the limit too', async () => {
  for (const mode of MODES) {
    const { user, project } = await fresh()
    await clients.shadow.recordUpload(user, project, BIG, { uploadId: 'big' })
    await db.query('UPDATE user_quotas SET used_bytes = 0 WHERE user_id = $1', [user])
    const report = await clients[mode].reconcile(user, { fix: true })
    assert.equal(report.fixedUsers, 1, mode)
    assert.deepEqual(await counters(user), { used: BIG, reserved: 0 }, mode)
  }
})

test('the database guard agrees: outside shadow it refuses growth past the limit, whoever writes', async () => {
  const { user } = await fresh()
  const error = await rejection(db.query('UPDATE user_quotas SET used_bytes = $2 WHERE user_id = $1', [user, BIG]))
  assert.equal(error.code, 'SQ001')
  assert.deepEqual(await counters(user), { used: 0, reserved: 0 })
})

test('an unknown project is NOT_FOUND in every mode (off and shadow are not a way around owner checks)', async () => {
  for (const mode of MODES) {
    const { user } = await fresh()
    const other = await insertProject(db, 'user_mode_owner')
    assert.equal((await rejection(clients[mode].recordUpload(user, randomUUID(), 1))).code, 'NOT_FOUND', mode)
    assert.equal((await rejection(clients[mode].reserveUpload(user, other, 1))).code, 'FORBIDDEN', mode)
  }
})
