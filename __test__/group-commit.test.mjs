// recordUpload, reserveUpload, commitUpload, cancelUpload and recordDeletion calls of many users
// at once are written in one transaction per kind (src/quota/coalesce.rs, coalesce_reserve.rs,
// coalesce_commit.rs, coalesce_cancel.rs, coalesce_deletion.rs); a second round settles the first
// round's reservations, a third deletes seeded and first-round uploads by id and bytes by
// deletion id. Every caller must get exactly the answer a serial run of the same calls gives:
// checked by replaying the calls one by one on the same starting data, in an order consistent
// with the answers (calls of one user are decided in the order they reached the batch, which the
// test cannot pick, so it is read back from the answers; calls of different users do not
// interact), and the database must end as the serial run leaves it (quota rows, project counters,
// ledger, reservations). Mixed in: users without a quota row, users with an expired reservation,
// duplicate and conflicting upload, reservation and deletion ids, sizes over the limit or past
// what a project counted, foreign and missing projects, and a project whose row the app deleted.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import fc from 'fast-check'
import pg from 'pg'
import { createClient } from '../index.js'
import { createTestDatabase, holdRow, insertProject, untilLockWaiters, wrongProjectCounters } from './helpers/db.mjs'

const MB = 1024 * 1024
const DEFAULT_LIMIT = 8 * MB
const db = await createTestDatabase('group')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: DEFAULT_LIMIT, poolSize: 4, logger: false })
await client.migrate()
after(() => client.close())

const USERS = 6
const userId = (i) => `user_group_${i}`
const projects = []
for (let i = 0; i < USERS; i++) projects.push([await insertProject(db, userId(i), 'a'), await insertProject(db, userId(i), 'b')])
const MISSING = randomUUID()
/** Per user, a project whose row the app deleted: its bytes are still counted (upload `old`). */
const GONE = Array.from({ length: USERS }, () => randomUUID())

/** Starting data: per user no quota row, or one with a limit, used bytes (with their ledger
 * entries: `seed` in project a, `old` in the gone project) and maybe an expired reservation. */
async function seed(rows) {
  const sql = ['BEGIN', 'DELETE FROM quota_ledger', 'DELETE FROM quota_project_usage', 'DELETE FROM quota_reservations', 'DELETE FROM user_quotas']
  for (const [i, row] of rows.entries()) {
    if (!row) continue
    const gone = row.gone ?? 0
    // Inserted under a limit that fits, then lowered (the database guard lets a limit go down):
    // an expired reservation may hold more than the limit leaves.
    sql.push(
      `INSERT INTO user_quotas (user_id, limit_bytes, used_bytes, reserved_bytes)
       VALUES ('${userId(i)}', ${Math.max(row.limit, row.used + gone + row.expired)}, ${row.used + gone}, ${row.expired})`,
      `UPDATE user_quotas SET limit_bytes = ${row.limit} WHERE user_id = '${userId(i)}'`,
    )
    if (row.used > 0) {
      sql.push(
        `INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes) VALUES ('${userId(i)}', '${projects[i][0]}', 'seed', 'upload', ${row.used})`,
      )
    }
    if (gone > 0) {
      sql.push(
        `INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes) VALUES ('${userId(i)}', '${GONE[i]}', 'old', 'upload', ${gone})`,
      )
    }
    if (row.expired > 0) {
      sql.push(
        `INSERT INTO quota_reservations (id, user_id, project_id, bytes, expires_at, status)
         VALUES (gen_random_uuid(), '${userId(i)}', '${projects[i][1]}', ${row.expired}, now() - interval '1 minute', 'pending')`,
      )
    }
  }
  sql.push('COMMIT')
  await db.query(sql.join(';\n'))
}

const quotaRow = fc.option(
  fc
    .record({ limit: fc.integer({ min: 2, max: 10 }), used: fc.integer({ min: 0, max: 2 }), gone: fc.constantFrom(0, 1), expired: fc.constantFrom(0, 0, 3) })
    .map((r) => ({
      limit: Math.max(r.limit, r.used + r.gone) * MB,
      used: r.used * MB,
      gone: r.gone * MB,
      expired: r.expired * MB,
    })),
  { nil: null },
)
const call = fc.record({
  kind: fc.constantFrom('upload', 'upload', 'reserve'),
  user: fc.integer({ min: 0, max: USERS - 1 }),
  // Mostly the user's own projects; sometimes another user's or one that does not exist.
  project: fc.constantFrom('a', 'a', 'b', 'b', 'foreign', 'missing'),
  // Few keys, so ids repeat: duplicates, and conflicts when the size or project differs.
  key: fc.integer({ min: 0, max: 5 }),
  bytes: fc.constantFrom(1, 1, 2, 3, 7).map((n) => n * MB),
})

/** Mostly commits and cancels of the first round's reservation ids. */
const settleCall = fc.oneof(
  { weight: 3, arbitrary: fc.record({
    kind: fc.constantFrom('commit', 'commit', 'cancel'),
    user: fc.integer({ min: 0, max: USERS - 1 }),
    key: fc.integer({ min: 0, max: 5 }),
    // Which of the first round's reservations it settles (unless `miss`: the user and key above).
    pick: fc.nat(),
    miss: fc.constantFrom(false, false, false, false, false, true),
    // undefined: the size reserved; a larger one may not fit
    actual: fc.constantFrom(undefined, undefined, 1 * MB, 4 * MB),
  }) },
  { weight: 1, arbitrary: call },
)

/** recordDeletion: by uploadId (seeded, first-round, or never recorded), with or without the
 * bytes, or by bytes under a few deletion ids (retries, and conflicts when the size or project
 * differs). Sizes past what a project counted are capped. */
const deleteCall = fc
  .record({
    kind: fc.constant('delete'),
    user: fc.integer({ min: 0, max: USERS - 1 }),
    project: fc.constantFrom('a', 'a', 'a', 'b', 'gone', 'foreign', 'missing'),
    upload: fc.constantFrom(null, null, null, 'seed', 'old', 'k0', 'k1', 'k2', 'k9'),
    deletion: fc.integer({ min: 0, max: 2 }),
    bytes: fc.constantFrom(undefined, undefined, 0, 1, 2, 5).map((n) => (n === undefined ? n : n * MB)),
  })
  .map((c) => (c.upload === null && c.bytes === undefined ? { ...c, bytes: 1 * MB } : c))

const projectOf = (c) =>
  ({ a: projects[c.user][0], b: projects[c.user][1], foreign: projects[(c.user + 1) % USERS][0], missing: MISSING, gone: GONE[c.user] })[c.project]

/** A reservation id per key (ids are per user: the same key of two users names two reservations). */
const reservationId = (key) => `00000000-0000-4000-8000-${String(key).padStart(12, '0')}`

async function run(c) {
  try {
    if (c.kind === 'delete') {
      const options = c.upload === null ? { deletionId: `d${c.deletion}` } : { uploadId: c.upload }
      return { ok: await client.recordDeletion(userId(c.user), projectOf(c), c.bytes, options) }
    }
    if (c.kind === 'commit') {
      return { ok: await client.commitUpload(userId(c.user), reservationId(c.key), c.actual) }
    }
    if (c.kind === 'cancel') return { ok: await client.cancelUpload(userId(c.user), reservationId(c.key)) }
    if (c.kind === 'reserve') {
      // The expiry is now() + TTL of the transaction that made it: not the same in two runs.
      const { expiresAt, ...made } = await client.reserveUpload(userId(c.user), projectOf(c), c.bytes, { reservationId: reservationId(c.key) })
      assert.ok(expiresAt instanceof Date)
      return { ok: made }
    }
    return { ok: await client.recordUpload(userId(c.user), projectOf(c), c.bytes, { uploadId: `k${c.key}` }) }
  } catch (error) {
    return { error: { ...error, code: error.code, message: error.message } }
  }
}

/** What one call does to its user's state, as the README rules say (key, then owner, then limit). */
function step(state, c) {
  if (c.kind === 'commit' || c.kind === 'cancel') return settleStep(state, c)
  if (c.kind === 'delete') return deleteStep(state, c)
  const project = projectOf(c)
  const ids = c.kind === 'reserve' ? 'reservations' : 'keys'
  const key = c.kind === 'reserve' ? c.key : `k${c.key}`
  const prior = state[ids].get(key)
  if (prior) {
    if (prior.bytes !== c.bytes || prior.project !== project) return { code: 'CONFLICT', state }
    return { duplicate: true, used: state.used, reserved: state.reserved, state }
  }
  if (c.project === 'missing') return { code: 'NOT_FOUND', state }
  if (c.project === 'foreign') return { code: 'FORBIDDEN', state }
  if (state.used + state.reserved + c.bytes > state.limit) return { code: 'QUOTA_EXCEEDED', used: state.used, reserved: state.reserved, state }
  const known = new Map(state[ids]).set(key, { bytes: c.bytes, project, status: 'pending' })
  const next =
    c.kind === 'reserve'
      ? { ...state, reserved: state.reserved + c.bytes, [ids]: known }
      : { ...state, used: state.used + c.bytes, [ids]: known, counters: counted(state, project, c.bytes) }
  return { duplicate: false, used: next.used, reserved: next.reserved, state: next }
}

/** commitUpload and cancelUpload as the README says: settled once, a retry answers the first outcome. */
function settleStep(state, c) {
  const r = state.reservations.get(c.key)
  if (!r) return { code: 'NOT_FOUND', state }
  const settle = (status, extra) => {
    const next = { ...state, ...extra, reservations: new Map(state.reservations).set(c.key, { ...r, status, committed: extra.committed }) }
    delete next.committed
    return { duplicate: false, used: next.used, reserved: next.reserved, state: next }
  }
  if (c.kind === 'cancel') {
    if (r.status === 'committed') return { code: 'CONFLICT', state }
    if (r.status === 'cancelled') return { duplicate: true, used: state.used, reserved: state.reserved, state }
    return settle('cancelled', { reserved: state.reserved - r.bytes })
  }
  const actual = c.actual ?? r.bytes
  if (r.status === 'committed') {
    if (r.committed === actual) return { duplicate: true, used: state.used, reserved: state.reserved, state }
    return { code: 'CONFLICT', state }
  }
  if (r.status === 'cancelled') return { code: 'CONFLICT', state }
  if (actual > r.bytes && state.used + state.reserved - r.bytes + actual > state.limit) {
    return { code: 'QUOTA_EXCEEDED', used: state.used, reserved: state.reserved, state }
  }
  return settle('committed', { used: state.used + actual, reserved: state.reserved - r.bytes, committed: actual, counters: counted(state, r.project, actual) })
}

/** The project counters after `bytes` more were counted for `project` (the ledger's trigger
 * creates a counter at the project's first entry, even one of 0 bytes). */
const counted = (state, project, bytes) => new Map(state.counters).set(project, (state.counters.get(project) ?? 0) + bytes)

/** recordDeletion as the README says: owner (a project whose row is gone is still the user's
 * while it has a counter), then the upload named, then the deletion's key (a retry answers the
 * first outcome), then the release, capped at the project's counter and the usage. A user
 * without a quota row gets 0 back once the owner check passes, and nothing is written. Its
 * reserved bytes are not predicted: a deletion answers the quota row as it locked it, with
 * reservations past their TTL that no charge swept yet (the serial replay checks them). */
function deleteStep(state, c) {
  const project = projectOf(c)
  if (c.project === 'foreign') return { code: 'FORBIDDEN', state }
  if (c.project === 'missing' || (c.project === 'gone' && !state.counters.has(project))) return { code: 'NOT_FOUND', state }
  if (!state.hasRow) return { duplicate: false, released: 0, used: 0, state }
  let wanted = c.bytes
  if (c.upload !== null) {
    const recorded = state.keys.get(c.upload)
    if (!recorded) return { code: 'NOT_FOUND', state }
    if (recorded.project !== project || (c.bytes !== undefined && c.bytes !== recorded.bytes)) return { code: 'CONFLICT', reason: 'MISMATCH', state }
    wanted = recorded.bytes
  }
  const key = c.upload === null ? `deletion d${c.deletion}` : `deletion of ${c.upload}`
  const prior = state.keys.get(key)
  if (prior) {
    if (prior.project !== project || prior.requested !== wanted) return { code: 'CONFLICT', reason: 'KEY_REUSED', state }
    return { duplicate: true, released: -prior.bytes, used: state.used, state }
  }
  const released = Math.max(0, Math.min(wanted, state.counters.get(project) ?? 0, state.used))
  const next = {
    ...state,
    used: state.used - released,
    keys: new Map(state.keys).set(key, { bytes: -released, project, requested: wanted }),
    counters: counted(state, project, -released),
  }
  return { duplicate: false, released, used: next.used, state: next }
}

function matches(predicted, answer) {
  if (predicted.code) {
    return (
      answer.error?.code === predicted.code &&
      (predicted.reason === undefined || answer.error.reason === predicted.reason) &&
      (predicted.used === undefined || (answer.error.usedBytes === predicted.used && answer.error.reservedBytes === predicted.reserved))
    )
  }
  return (
    answer.ok?.duplicate === predicted.duplicate &&
    answer.ok.usedBytes === predicted.used &&
    (predicted.reserved === undefined || answer.ok.reservedBytes === predicted.reserved) &&
    (predicted.released === undefined || answer.ok.releasedBytes === predicted.released)
  )
}

/** An order of one user's calls in which each answer is what a serial run would give
 * (depth-first), with the state it ends in, or null when no order explains the answers.
 *
 * A call that leaves the state as it is (any refusal, a duplicate) and whose answer matches now
 * is placed at once, without trying the others first: in any order that explains the answers
 * from here it can be moved to the front, since the calls before it see the same state either
 * way. Only calls that change the state are branched on, and their answers pin the used and
 * reserved bytes they saw. Without that rule a user's many refusals fit anywhere, and the search
 * (remembering 2^n subsets of them) ran for minutes and out of memory in CI. States found to
 * lead nowhere are remembered; a budget turns a search gone wrong into a clear failure. */
function orderFor(state, pending, calls, answers, deadEnds = new Set(), budget = { steps: 200_000 }) {
  if (pending.length === 0) return { order: [], state }
  if (--budget.steps < 0) throw new Error('orderFor: the search for a serial order took over 200,000 steps')
  for (const [n, i] of pending.entries()) {
    const predicted = step(state, calls[i])
    if (predicted.state !== state || !matches(predicted, answers[i])) continue
    const rest = orderFor(state, pending.filter((_, m) => m !== n), calls, answers, deadEnds, budget)
    return rest && { order: [i, ...rest.order], state: rest.state }
  }
  const key = JSON.stringify([state.used, state.reserved, [...state.keys], [...state.reservations], [...state.counters], pending])
  if (deadEnds.has(key)) return null
  for (const [n, i] of pending.entries()) {
    const predicted = step(state, calls[i])
    if (!matches(predicted, answers[i])) continue
    const rest = orderFor(predicted.state, pending.filter((_, m) => m !== n), calls, answers, deadEnds, budget)
    if (rest) return { order: [i, ...rest.order], state: rest.state }
  }
  deadEnds.add(key)
  return null
}

async function checkInvariants() {
  const { rows } = await db.query(
    `SELECT q.user_id, q.used_bytes::float8 AS used, q.limit_bytes::float8 AS limit, q.reserved_bytes::float8 AS reserved,
            (SELECT coalesce(sum(bytes), 0)::float8 FROM quota_ledger l WHERE l.user_id = q.user_id) AS ledger,
            (SELECT coalesce(sum(bytes), 0)::float8 FROM quota_reservations r WHERE r.user_id = q.user_id AND r.status = 'pending') AS pending
       FROM user_quotas q`,
  )
  for (const row of rows) {
    assert.equal(row.used, row.ledger, `${row.user_id}: used_bytes is the ledger's sum`)
    assert.ok(row.used >= 0, `${row.user_id}: used_bytes ${row.used} is not below zero`)
    assert.equal(row.reserved, row.pending, `${row.user_id}: reserved_bytes is what its pending reservations hold`)
    assert.ok(row.used <= row.limit, `${row.user_id}: used_bytes ${row.used} within the limit ${row.limit}`)
  }
  assert.deepEqual(await wrongProjectCounters(db), [], 'each project counter is its ledger entries\' sum, never below zero')
}

/** Each user's state as `seed(rows)` leaves it, with the usage `checkQuota` read. */
function startState(rows, u, usage) {
  const row = rows[u]
  const keys = new Map()
  const counters = new Map()
  if (row?.used > 0) {
    keys.set('seed', { bytes: row.used, project: projects[u][0] })
    counters.set(projects[u][0], row.used)
  }
  if (row?.gone > 0) {
    keys.set('old', { bytes: row.gone, project: GONE[u] })
    counters.set(GONE[u], row.gone)
  }
  return { used: usage.usedBytes, reserved: usage.reservedBytes, limit: usage.limitBytes, hasRow: true, keys, counters, reservations: new Map() }
}

/** What the test compares of the database after a run: quota rows, project counters, ledger and
 * reservations (without what differs between two runs: times, and the seeded reservations' ids). */
async function snapshot() {
  const sorted = async (sql) => (await db.query(sql)).rows.map((r) => JSON.stringify(r)).sort()
  return {
    quotas: await sorted('SELECT user_id, used_bytes::text, reserved_bytes::text, limit_bytes::text FROM user_quotas'),
    counters: await sorted('SELECT user_id, project_id, used_bytes::text FROM quota_project_usage'),
    ledger: await sorted('SELECT user_id, project_id::text, idempotency_key, kind, bytes::text, requested_bytes::text FROM quota_ledger'),
    reservations: await sorted(
      `SELECT user_id, CASE WHEN id::text LIKE '00000000-%' THEN id::text END AS id, project_id::text, bytes::text, status, committed_bytes::text
         FROM quota_reservations`,
    ),
  }
}

/** Whether some entries written after transaction `xid` (matching `where`) shared a commit. */
async function sharedCommit(table, where, xid) {
  const { rows: [n] } = await db.query(
    `SELECT count(DISTINCT xmin::text)::int AS commits, count(*)::int AS made FROM ${table} WHERE ${where} AND xmin::text::bigint > $1`,
    [xid],
  )
  return n.commits < n.made
}

const currentXid = async () => (await db.query('SELECT txid_current()::text::bigint AS xid')).rows[0].xid

test('concurrent recordUpload, reserveUpload, commitUpload, cancelUpload and recordDeletion calls across users answer exactly as the same calls one by one', async () => {
  let batched = 0
  let reservedTogether = 0
  let committedTogether = 0
  let cancelledTogether = 0
  let deletedTogether = 0
  await fc.assert(
    fc.asyncProperty(
      fc.array(quotaRow, { minLength: USERS, maxLength: USERS }),
      fc.array(call, { minLength: 1, maxLength: 60, size: 'medium' }),
      fc.array(settleCall, { minLength: 0, maxLength: 60, size: 'max' }),
      fc.array(deleteCall, { minLength: 1, maxLength: 60, size: 'max' }),
      async (rows, calls, settleCalls, deletes) => {
      const reserves = calls.filter((c) => c.kind === 'reserve')
      const settles = settleCalls.map((c) => {
        if (!('pick' in c) || c.miss || reserves.length === 0) return c
        const { user, key } = reserves[c.pick % reserves.length]
        return { ...c, user, key }
      })
      await seed(rows)
      const start = []
      for (let u = 0; u < USERS; u++) start.push(await client.checkQuota(userId(u), 0))
      const before = await currentXid()
      const together = await Promise.all(calls.map(run))
      if (await sharedCommit('quota_ledger', `idempotency_key <> 'seed'`, before)) batched++
      if (await sharedCommit('quota_reservations', 'true', before)) reservedTogether++
      await checkInvariants()
      // Second round: settle the first round's reservations, all at once.
      const mid = await currentXid()
      const settled = await Promise.all(settles.map(run))
      if (await sharedCommit('quota_reservations', `status = 'committed'`, mid)) committedTogether++
      if (await sharedCommit('quota_reservations', `status = 'cancelled'`, mid)) cancelledTogether++
      await checkInvariants()
      // Third round: deletions, all at once. No call of it creates a quota row.
      const { rows: withRow } = await db.query('SELECT user_id FROM user_quotas')
      const late = await currentXid()
      const deleted = await Promise.all(deletes.map(run))
      if (await sharedCommit('quota_ledger', `kind = 'deletion'`, late)) deletedTogether++
      await checkInvariants()
      const batchedEnd = await snapshot()

      const rounds = [calls, settles, deletes]
      const answers = [together, settled, deleted]
      const orders = [[], [], []]
      for (let u = 0; u < USERS; u++) {
        let state = startState(rows, u, start[u])
        for (const r of [0, 1, 2]) {
          if (r === 2) state = { ...state, hasRow: withRow.some((row) => row.user_id === userId(u)) }
          const mine = rounds[r].flatMap((c, i) => (c.user === u ? [i] : []))
          const found = orderFor(state, mine, rounds[r], answers[r])
          assert.ok(found, `user ${u}, round ${r + 1}: no serial order explains the answers ${JSON.stringify(mine.map((i) => [rounds[r][i], answers[r][i]]))}`)
          orders[r].push(...found.order)
          state = found.state
        }
      }

      await seed(rows)
      const oneByOne = [new Array(calls.length), new Array(settles.length), new Array(deletes.length)]
      for (const r of [0, 1, 2]) for (const i of orders[r]) oneByOne[r][i] = await run(rounds[r][i])
      assert.deepEqual(together, oneByOne[0])
      assert.deepEqual(settled, oneByOne[1])
      assert.deepEqual(deleted, oneByOne[2])
      await checkInvariants()
      assert.deepEqual(batchedEnd, await snapshot(), 'the database ends as the serial run leaves it')
    }),
    { numRuns: 30 },
  )
  assert.ok(batched > 0, 'some calls were charged together in one commit')
  assert.ok(reservedTogether > 0, 'some reservations were made together in one commit')
  assert.ok(committedTogether > 0, 'some reservations were committed together in one commit')
  assert.ok(deletedTogether > 0, 'some deletions were released together in one commit')
  // Not asserted here: a settle round makes only a few cancels of distinct reservations (they
  // pick among the first round's reservations), so two of them share a commit in about one run
  // in fifteen and 30 runs missed every one about one time in eight. That cancels are batched is
  // asserted without chance by group-commit-faults.test.mjs ("cancels of two users shared a transaction");
  // here every cancel, batched or not, is still checked against a serial replay.
  void cancelledTogether
})

test('the serial-order check refutes answers no order explains, and stays fast with many refusals', () => {
  const start = () => ({ used: 0, reserved: 0, limit: 4 * MB, hasRow: true, keys: new Map(), counters: new Map(), reservations: new Map() })
  const up = (key, bytes, project = 'a') => ({ kind: 'upload', user: 0, project, key, bytes })
  const ok = (used, duplicate = false) => ({ ok: { duplicate, usedBytes: used, reservedBytes: 0 } })
  const refused = (code, used) => ({ error: used === undefined ? { code } : { code, usedBytes: used, reservedBytes: 0 } })
  // Two 1 MB uploads both answered "used 1 MB": no serial order gives that.
  assert.equal(orderFor(start(), [0, 1], [up(0, MB), up(1, MB)], [ok(MB), ok(MB)]), null)
  // Answered 2 MB then 1 MB: the second call went first.
  assert.deepEqual(orderFor(start(), [0, 1], [up(0, MB), up(1, MB)], [ok(2 * MB), ok(MB)]).order, [1, 0])
  // A refusal for a limit the serial run never reached.
  assert.equal(orderFor(start(), [0], [up(0, MB)], [refused('QUOTA_EXCEEDED', 0)]), null)
  // 40 refusals that fit anywhere around 4 charges, and one answer nothing explains: refuted
  // without trying the refusals' 40! orders (or 2^40 subsets).
  const calls = [up(0, MB), up(1, MB), up(2, MB), up(3, MB)]
  const answers = [ok(MB), ok(2 * MB), ok(3 * MB), ok(4 * MB)]
  for (let i = 0; i < 40; i++) {
    calls.push(i % 2 ? up(9, MB, 'foreign') : up(0, 3 * MB))
    answers.push(i % 2 ? refused('FORBIDDEN') : refused('CONFLICT'))
  }
  const pending = calls.map((_, i) => i)
  assert.equal(orderFor(start(), pending, calls, answers).order.length, 44)
  answers[3] = ok(5 * MB)
  assert.equal(orderFor(start(), pending, calls, answers), null)
})

test('a batch with a refused, a conflicting and a foreign call: the neighbours are charged, in one commit', async () => {
  await seed([
    { limit: 10 * MB, used: 0, expired: 0 },
    { limit: 10 * MB, used: 0, expired: 0 },
    { limit: 10 * MB, used: 0, expired: 0 },
  ])
  await client.recordUpload(userId(2), projects[2][0], 1 * MB, { uploadId: 'taken' })
  // Enough calls that most queue behind the first and go out together.
  const calls = []
  for (let round = 0; round < 10; round++) {
    calls.push(
      client.recordUpload(userId(0), projects[0][0], 100, { uploadId: `ok0-${round}` }),
      client.recordUpload(userId(1), projects[1][0], 100, { uploadId: `ok1-${round}` }),
      client.recordUpload(userId(0), projects[0][0], 20 * MB, { uploadId: `big-${round}` }),
      client.recordUpload(userId(2), projects[2][0], 2 * MB, { uploadId: 'taken' }),
      client.recordUpload(userId(1), projects[0][0], 100, { uploadId: `foreign-${round}` }),
    )
  }
  const answers = await Promise.allSettled(calls)
  const codes = answers.map((a) => (a.status === 'fulfilled' ? 'ok' : a.reason.code))
  assert.deepEqual(codes, Array.from({ length: 10 }, () => ['ok', 'ok', 'QUOTA_EXCEEDED', 'CONFLICT', 'FORBIDDEN']).flat())
  assert.equal(answers[3].reason.reason, 'KEY_REUSED')
  assert.equal(answers[2].reason.requestedBytes, 20 * MB)
  assert.equal(answers[2].reason.limitBytes, 10 * MB)
  const { rows } = await db.query(
    `SELECT count(*)::int AS entries, count(DISTINCT xmin::text)::int AS commits FROM quota_ledger WHERE idempotency_key LIKE 'ok%'`,
  )
  assert.equal(rows[0].entries, 20)
  assert.ok(rows[0].commits < rows[0].entries, `charges of two users shared commits (${rows[0].commits} for ${rows[0].entries})`)
  await checkInvariants()
})

/** Whether another transaction holds the user's quota row. */
async function locked(user) {
  const other = new pg.Client({ connectionString: db.url })
  await other.connect()
  try {
    await other.query('BEGIN')
    await other.query('SELECT 1 FROM user_quotas WHERE user_id = $1 FOR UPDATE NOWAIT', [user])
    return false
  } catch (error) {
    if (error.code === '55P03') return true
    throw error
  } finally {
    await other.end()
  }
}

test('a batch locks its users\' rows in ascending user_id order, whatever order the calls came in', async () => {
  await seed([])
  const [a, b, c, x] = ['user_lock_a', 'user_lock_b', 'user_lock_c', 'user_lock_x']
  const project = {}
  for (const user of [a, b, c, x]) {
    project[user] = await insertProject(db, user)
    await client.recordUpload(user, project[user], 1, { uploadId: 'first' })
  }
  const heldB = await holdRow(db, b)
  const heldX = await holdRow(db, x)
  let first
  let queued = []
  try {
    // The charge slot busy, waiting on x's held row, so the next calls queue into one batch.
    first = client.recordUpload(x, project[x], 1, { uploadId: 'x1' })
    await untilLockWaiters(db, 1)
    queued = [c, a, b].map((user) => client.recordUpload(user, project[user], 1, { uploadId: 'queued' }))
    await db.query('SELECT 1') // one round trip: the queued calls have reached the queue
    await heldX.release()
    await first
    // The batch [c, a, b] now waits for b's row: it must hold a's (before b) and not yet c's.
    await untilLockWaiters(db, 1)
    assert.equal(await locked(a), true, 'a (before b) is locked by the waiting batch')
    assert.equal(await locked(c), false, 'c (after b) is not locked while the batch waits for b')
  } finally {
    await heldX.release().catch(() => {})
    await heldB.release().catch(() => {})
  }
  const answers = await Promise.all([first, ...queued])
  assert.deepEqual(answers.map((r) => r.duplicate), [false, false, false, false])
  await checkInvariants()
})

test('a batch that fails as a whole (a unique key taken behind its back) is answered call by call', async () => {
  await seed([])
  const [a, b, c, x] = ['user_lock_a', 'user_lock_b', 'user_lock_c', 'user_lock_x']
  const project = {}
  for (const user of [a, b, c, x]) {
    const { rows } = await db.query('SELECT id FROM projects WHERE user_id = $1', [user])
    project[user] = rows[0].id
    await client.recordUpload(user, project[user], 1, { uploadId: 'first' })
  }
  // Another writer's ledger entry for a's key, not yet committed: the batch does not see it,
  // waits on the unique key, then fails with a unique violation when it commits.
  const app = new pg.Client({ connectionString: db.url })
  await app.connect()
  await app.query('BEGIN')
  await app.query(`INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes) VALUES ($1, $2, 'clash', 'upload', 5)`, [
    a,
    project[a],
  ])
  const heldX = await holdRow(db, x)
  let first
  let queued = []
  try {
    // The charge slot busy, waiting on x's held row, so the next calls queue into one batch.
    first = client.recordUpload(x, project[x], 1, { uploadId: 'x1' })
    await untilLockWaiters(db, 1)
    queued = [
      client.recordUpload(a, project[a], 5, { uploadId: 'clash' }),
      client.recordUpload(c, project[c], 7, { uploadId: 'neighbour' }),
    ]
    await db.query('SELECT 1') // one round trip: the queued calls have reached the queue
    await heldX.release()
    await first
    await untilLockWaiters(db, 1) // the batch waits for the other writer's key
    await app.query('COMMIT')
  } finally {
    await app.end().catch(() => {})
    await heldX.release().catch(() => {})
  }
  const [clash, neighbour] = await Promise.all(queued)
  assert.equal(clash.duplicate, true, 'the key was recorded (by the other writer): a duplicate, nothing charged')
  assert.equal(neighbour.duplicate, false)
  assert.equal(neighbour.usedBytes, 1 + 7, 'the neighbour charged once, after its batch was rolled back')
  const { rows } = await db.query(`SELECT count(*)::int AS n FROM quota_ledger WHERE user_id = $1 AND idempotency_key = 'neighbour'`, [c])
  assert.equal(rows[0].n, 1)
})

test('a call whose key is recorded by another writer while it waits for the row is KEY_REUSED, not QUOTA_EXCEEDED', async () => {
  await seed([])
  const user = 'user_key_race'
  const project = await insertProject(db, user)
  await client.setQuotaLimit(user, 9 * MB)
  // Another writer (another app instance) charges 3 MB under key k: the row is locked when our
  // call's statement starts, so its snapshot has no entry for k; once the row is free it shows
  // 3 MB more, and 7 MB no longer fit. Run one after the other, the key decides first.
  const app = new pg.Client({ connectionString: db.url })
  await app.connect()
  try {
    await app.query('BEGIN')
    await app.query('UPDATE user_quotas SET used_bytes = used_bytes + $2 WHERE user_id = $1', [user, 3 * MB])
    await app.query(`INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes) VALUES ($1, $2, 'k', 'upload', $3)`, [
      user,
      project,
      3 * MB,
    ])
    const call = client.recordUpload(user, project, 7 * MB, { uploadId: 'k' }).catch((e) => e)
    await untilLockWaiters(db, 1)
    await app.query('COMMIT')
    const error = await call
    assert.equal(error.code, 'CONFLICT', `${error.code}: ${error.message}`)
    assert.equal(error.reason, 'KEY_REUSED')
  } finally {
    await app.end()
  }
})
