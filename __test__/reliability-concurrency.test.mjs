// Thousands of mixed calls at once from several clients (as several Next.js servers would):
// uploads with and without ids (and retries of the same id, some at the same moment),
// reservations committed and cancelled, deletions, copies, limit changes through the API and in
// raw SQL as an admin would, checks and usage reads. Afterwards, for every user: usage never
// grew past the limit, the counter equals the ledger and reconcile() finds no drift, reserved
// bytes equal the live reservations, nothing is negative, and every accepted upload, commit,
// deletion and copy is in the ledger exactly once (and no refused one at all).
//
// A new kind of call is one more row in OP_KINDS plus its expectation in the ledger checks.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { createClient, StorageQuotaError } from '../index.js'
import { createTestDatabase, insertProject } from './helpers/db.mjs'

const CALLS = Number(process.env.CONCURRENCY_CALLS ?? 4000)
const IN_FLIGHT = 64
const CLIENTS = 4
const USERS = ['user_conc_a', 'user_conc_b', 'user_conc_c']
const SEED = Number(process.env.CONCURRENCY_SEED ?? Date.now() % 1_000_000)

/** Small deterministic PRNG (mulberry32), so a failing seed can be replayed. */
function prng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const db = await createTestDatabase('rel_conc')
const clients = Array.from({ length: CLIENTS }, (_, i) =>
  createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, poolSize: 5, applicationName: `node-${i}` }),
)
after(() => Promise.all(clients.map((c) => c.close())))
await clients[0].migrate()

// Every change of a quota row, as the database saw it: the whole history, not only the end.
await db.query(`
  CREATE TABLE quota_audit (user_id text, old_total bigint, new_total bigint, new_limit bigint);
  CREATE FUNCTION quota_audit() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO quota_audit VALUES (NEW.user_id,
      CASE WHEN TG_OP = 'INSERT' THEN 0 ELSE OLD.used_bytes + OLD.reserved_bytes END,
      NEW.used_bytes + NEW.reserved_bytes, NEW.limit_bytes);
    RETURN NEW;
  END $$;
  CREATE TRIGGER quota_audit AFTER INSERT OR UPDATE ON user_quotas FOR EACH ROW EXECUTE FUNCTION quota_audit();
`)

const projects = {}
for (const user of USERS) projects[user] = [await insertProject(db, user, 'one'), await insertProject(db, user, 'two')]

test(`${CALLS} mixed concurrent calls from ${CLIENTS} clients keep every user's books exact`, async () => {
  const random = prng(SEED)
  const pick = (list) => list[Math.floor(random() * list.length)]
  const uploads = [] // every upload attempt: { user, project, bytes, uploadId, outcome }
  const checks = []
  const allocations = []
  const limitChanges = []
  const other = [] // every lifecycle call: { op, user, args, outcome }
  const reservations = [] // { user, project, bytes, reservationId }
  const acceptedUploads = [] // { user, project, uploadId, bytes } of recordUpload, for deletions
  const issued = new Map() // uploadId → { user, project, bytes } of the first attempt

  function upload(withId, reuse) {
    let spec
    if (reuse && issued.size > 0) {
      spec = pick([...issued.values()])
    } else {
      const user = pick(USERS)
      spec = { user, project: pick(projects[user]), bytes: 1 + Math.floor(random() * 20_000), uploadId: withId ? `up-${randomUUID()}` : undefined }
      if (withId) issued.set(spec.uploadId, spec)
    }
    return async (client) => {
      const record = { ...spec, outcome: null }
      uploads.push(record)
      try {
        record.outcome = { value: await client.recordUpload(spec.user, spec.project, spec.bytes, spec.uploadId ? { uploadId: spec.uploadId } : undefined) }
        acceptedUploads.push({ ...spec, uploadId: record.outcome.value.uploadId })
      } catch (error) {
        record.outcome = { error }
      }
    }
  }
  /** Runs a lifecycle call; only the listed codes may reject it. */
  function lifecycle(op, user, allowed, run) {
    return async (client) => {
      const record = { op, user, allowed, outcome: null }
      other.push(record)
      try {
        record.outcome = { value: await run(client) }
      } catch (error) {
        record.outcome = { error }
      }
      return record.outcome
    }
  }
  let copies = 0

  // Kinds of call and their weights.
  const OP_KINDS = [
    [30, () => upload(true, false)],
    [10, () => upload(true, true)], // a retry of an earlier upload id, maybe while it is in flight
    [10, () => upload(false, false)],
    [5, () => {
      const first = upload(true, false)
      const spec = [...issued.values()].at(-1)
      const twin = async (client) => {
        const record = { ...spec, outcome: null }
        uploads.push(record)
        try {
          record.outcome = { value: await client.recordUpload(spec.user, spec.project, spec.bytes, { uploadId: spec.uploadId }) }
        } catch (error) {
          record.outcome = { error }
        }
      }
      // The same id sent twice at the same moment, from two clients.
      return (client) => Promise.all([first(client), twin(pick(clients))])
    }],
    [25, () => async (client) => {
      const user = pick(USERS)
      checks.push({ user, result: await client.checkQuota(user, Math.floor(random() * 50_000)) })
    }],
    [12, () => async (client) => {
      const user = pick(USERS)
      const project = pick(projects[user])
      allocations.push({ user, project, result: await client.allocateProjectPath(user, project) })
    }],
    [8, () => {
      const user = pick(USERS)
      const project = pick(projects[user])
      const bytes = 1 + Math.floor(random() * 20_000)
      const reserve = lifecycle('reserveUpload', user, ['QUOTA_EXCEEDED'], (c) => c.reserveUpload(user, project, bytes))
      return async (client) => {
        const { value } = await reserve(client)
        if (value) reservations.push({ user, project, bytes, reservationId: value.reservationId })
      }
    }],
    [6, () => async (client) => {
      if (reservations.length === 0) return
      const r = pick(reservations)
      // Commit the reserved amount, less, or more (more only fits if the difference does).
      const actual = pick([undefined, Math.floor(r.bytes / 2), r.bytes + 5_000])
      await lifecycle('commitUpload', r.user, ['QUOTA_EXCEEDED', 'CONFLICT'], (c) => c.commitUpload(r.user, r.reservationId, actual))(client)
    }],
    [3, () => async (client) => {
      if (reservations.length === 0) return
      const r = pick(reservations)
      await lifecycle('cancelUpload', r.user, ['CONFLICT'], (c) => c.cancelUpload(r.user, r.reservationId))(client)
    }],
    [5, () => async (client) => {
      if (acceptedUploads.length === 0) return
      const u = pick(acceptedUploads)
      await lifecycle('recordDeletion', u.user, ['CONFLICT'], (c) => c.recordDeletion(u.user, u.project, undefined, { uploadId: u.uploadId }))(client)
    }],
    [2, () => async (client) => {
      const user = pick(USERS)
      const source = pick(projects[user])
      const target = await insertProject(db, user, `copy-${copies++}`)
      await client.allocateProjectPath(user, source)
      await lifecycle('copyProject', user, ['QUOTA_EXCEEDED'], (c) => c.copyProject(user, source, target))(client)
    }],
    [3, () => async (client) => {
      const user = pick(USERS)
      const limit = pick([100_000, 500_000, 1_500_000, 3_000_000, 6_000_000, 12_000_000])
      const { value } = await lifecycle('setQuotaLimit', user, [], (c) => c.setQuotaLimit(user, limit, { changedBy: 'test', reason: 'plan change' }))(client)
      if (value) limitChanges.push({ user, limit })
    }],
    [4, () => async (client) => {
      const user = pick(USERS)
      await lifecycle('getUsage', user, [], (c) => c.getUsage(user, { projects: true }))(client)
    }],
    [5, () => async () => {
      // An admin changing a plan in raw SQL, lowering or raising it.
      const user = pick(USERS)
      const limit = pick([100_000, 500_000, 1_500_000, 3_000_000, 6_000_000, 12_000_000])
      await db.query(
        `INSERT INTO user_quotas (user_id, limit_bytes) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET limit_bytes = EXCLUDED.limit_bytes`,
        [user, limit],
      )
      limitChanges.push({ user, limit })
    }],
  ]
  const totalWeight = OP_KINDS.reduce((sum, [w]) => sum + w, 0)
  function nextOp() {
    let r = random() * totalWeight
    for (const [weight, make] of OP_KINDS) {
      if ((r -= weight) < 0) return make()
    }
    return OP_KINDS[0][1]()
  }

  const ops = Array.from({ length: CALLS }, nextOp)
  const started = performance.now()
  let next = 0
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (next < ops.length) {
        const op = ops[next++]
        await op(pick(clients))
      }
    }),
  )
  const elapsed = performance.now() - started

  // Every failure is a refusal for lack of room; nothing else went wrong.
  const failures = uploads.filter((u) => u.outcome.error)
  for (const { outcome } of failures) {
    assert.ok(outcome.error instanceof StorageQuotaError, String(outcome.error))
    assert.equal(outcome.error.code, 'QUOTA_EXCEEDED', outcome.error.message)
  }
  const accepted = uploads.filter((u) => u.outcome.value)
  for (const { outcome } of accepted) {
    const v = outcome.value
    assert.ok(v.usedBytes >= 0 && v.reservedBytes >= 0 && v.remainingBytes >= 0)
    if (!v.duplicate) assert.ok(v.usedBytes + v.reservedBytes <= v.limitBytes, 'a charge never passes the limit it saw')
  }

  for (const { op, allowed, outcome } of other) {
    if (outcome.error) {
      assert.ok(outcome.error instanceof StorageQuotaError, `${op}: ${outcome.error}`)
      assert.ok(allowed.includes(outcome.error.code), `${op}: ${outcome.error.code}: ${outcome.error.message}`)
    } else {
      const v = outcome.value
      for (const key of ['usedBytes', 'reservedBytes', 'remainingBytes']) {
        if (key in v) assert.ok(v[key] >= 0, `${op}: ${key} ${v[key]}`)
      }
    }
  }
  const ok = (op) => other.filter((o) => o.op === op && o.outcome.value)

  for (const user of USERS) {
    // What the calls say was charged and released, by ledger kind.
    const committed = new Map()
    for (const { user: u, outcome } of ok('commitUpload')) {
      if (u !== user) continue
      const v = outcome.value
      const seen = committed.get(v.reservationId)
      assert.ok(seen === undefined || seen === v.committedBytes, 'a reservation is committed once, with one size')
      committed.set(v.reservationId, v.committedBytes)
    }
    const released = ok('recordDeletion').filter((o) => o.user === user && !o.outcome.value.duplicate)
    const copied = ok('copyProject').filter((o) => o.user === user && !o.outcome.value.duplicate)
    const byKind = await db.query(
      `SELECT kind, count(*)::int AS n, coalesce(sum(bytes), 0)::float8 AS bytes FROM quota_ledger WHERE user_id = $1 GROUP BY kind`,
      [user],
    )
    const kinds = Object.fromEntries(byKind.rows.map((r) => [r.kind, r]))
    const uploadsCharged = new Map()
    for (const u of accepted) if (u.user === user) uploadsCharged.set(u.outcome.value.uploadId, u.bytes)
    const sum = (values) => values.reduce((a, b) => a + b, 0)
    assert.equal(kinds.upload?.n ?? 0, uploadsCharged.size + committed.size, `${user}: one ledger row per upload and commit`)
    assert.equal(kinds.upload?.bytes ?? 0, sum([...uploadsCharged.values()]) + sum([...committed.values()]))
    assert.equal(kinds.deletion?.n ?? 0, released.length, `${user}: one ledger row per deletion`)
    assert.equal(kinds.deletion?.bytes ?? 0, -sum(released.map((o) => o.outcome.value.releasedBytes)))
    assert.equal(kinds.copy?.bytes ?? 0, sum(copied.map((o) => o.outcome.value.copiedBytes)))

    // Reserved bytes are exactly the live reservations.
    const pending = await db.query(
      `SELECT coalesce(sum(bytes), 0)::float8 AS bytes FROM quota_reservations WHERE user_id = $1 AND status = 'pending' AND expires_at > now()`,
      [user],
    )
    const { rows: [counters] } = await db.query(`SELECT reserved_bytes::float8 AS reserved FROM user_quotas WHERE user_id = $1`, [user])
    assert.equal(counters.reserved, pending.rows[0].bytes, `${user}: reserved_bytes equals the live reservations`)

    // reconcile() recomputes from the ledger and finds nothing to fix.
    const report = await clients[0].reconcile(user)
    for (const drift of report.users) {
      assert.equal(drift.driftBytes, 0, `${user}: reconcile drift`)
      assert.equal(drift.reservedDriftBytes, 0, `${user}: reconcile reserved drift`)
      assert.equal(drift.fixed, false)
    }

    const { rows: [row] } = await db.query(
      `SELECT used_bytes::float8 AS used, reserved_bytes::float8 AS reserved, limit_bytes::float8 AS limit FROM user_quotas WHERE user_id = $1`,
      [user],
    )
    const ledger = await db.query(
      `SELECT idempotency_key, kind, bytes::float8 AS bytes, project_id FROM quota_ledger WHERE user_id = $1`,
      [user],
    )
    const uploadRows = ledger.rows.filter((r) => r.kind === 'upload' && !committed.has(r.idempotency_key) && ![...committed.keys()].some((id) => r.idempotency_key.includes(id)))
    // No negative value, and the counter equals the ledger.
    assert.ok(row.used >= 0 && row.reserved >= 0 && row.limit >= 0, JSON.stringify(row))
    const ledgerSum = ledger.rows.reduce((sum, r) => sum + r.bytes, 0)
    assert.equal(row.used, ledgerSum, `${user}: used_bytes equals the ledger sum`)

    // Every accepted upload is in the ledger exactly once; nothing else is.
    const mine = accepted.filter((u) => u.user === user)
    const expected = new Map()
    for (const u of mine) expected.set(u.outcome.value.uploadId, u.bytes)
    assert.equal(uploadRows.length, expected.size, `${user}: one ledger row per accepted upload`)
    for (const r of uploadRows) {
      assert.equal(r.bytes, expected.get(r.idempotency_key), `${user}: ${r.idempotency_key}`)
    }
    // An id accepted several times was charged by exactly one of the calls.
    const firsts = new Map()
    for (const u of mine) {
      if (!u.outcome.value.duplicate) firsts.set(u.outcome.value.uploadId, (firsts.get(u.outcome.value.uploadId) ?? 0) + 1)
    }
    for (const [id, n] of firsts) assert.equal(n, 1, `${id} charged ${n} times`)
    assert.equal(firsts.size, expected.size)
    // A refused id that never succeeded left no trace.
    for (const u of failures.filter((f) => f.user === user && f.uploadId)) {
      if (!expected.has(u.uploadId)) assert.ok(!ledger.rows.some((r) => r.idempotency_key === u.uploadId))
    }
  }

  // Over the whole history: whenever usage grew, it stayed within the limit of that moment.
  const grew = await db.query(
    `SELECT count(*)::int AS n, count(*) FILTER (WHERE new_total > new_limit)::int AS over
       FROM quota_audit WHERE new_total > old_total`,
  )
  assert.equal(grew.rows[0].over, 0, 'usage never grew past the limit')
  assert.ok(grew.rows[0].n > 100, 'the run charged many uploads')

  for (const { result } of checks) {
    assert.ok(result.usedBytes >= 0 && result.reservedBytes >= 0 && result.remainingBytes >= 0)
    assert.equal(result.remainingBytes, Math.max(0, result.limitBytes - result.usedBytes - result.reservedBytes))
  }
  const paths = new Map()
  for (const { project, result } of allocations) {
    const seen = paths.get(project) ?? result.id
    assert.equal(result.id, seen, 'every allocation of a project returns the same record')
    paths.set(project, seen)
  }

  const duplicates = accepted.filter((u) => u.outcome.value.duplicate).length
  console.log(
    `# seed ${SEED}: ${CALLS} ops (${uploads.length} uploads: ${accepted.length - duplicates} charged, ${duplicates} duplicates, ` +
      `${failures.length} refused; ${checks.length} checks; ${allocations.length} allocations; ${limitChanges.length} limit changes; ` +
      `${[...new Set(other.map((o) => o.op))].map((op) => `${other.filter((o) => o.op === op).length} ${op}`).join(', ')}) ` +
      `in ${Math.round(elapsed)} ms; ${grew.rows[0].n} growths audited`,
  )
})
