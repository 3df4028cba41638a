// One app instance of many-instances.test.mjs: its own process and client (as a container or a
// serverless function would be), 64 callers at once on users other instances share, through
// the pooled URL. Outages are announced by the parent ('down' / 'up'); a call that fails with
// DB_UNAVAILABLE or DB_TIMEOUT is retried with the same idempotency key until it settles.
import { createClient } from '../../index.js'

const { URL: databaseUrl, STORAGE_ROOT: storageRoot, PLAN } = process.env
const plan = JSON.parse(PLAN)
const quota = createClient({ databaseUrl, storageRoot, poolSize: 4, logger: false, connectTimeoutMs: 2000 })

let down = false
let upWaiters = []
process.on('message', (message) => {
  if (message === 'dump') process.send({ pending: [...pending.values()].map((p) => `${p.label} attempt ${p.attempt}`) })
  if (message === 'down') down = true
  if (message === 'up') {
    down = false
    for (const resolve of upWaiters.splice(0)) resolve()
  }
})

const TRANSIENT = new Set(['DB_UNAVAILABLE', 'DB_TIMEOUT'])
const stats = { calls: 0, retries: 0, refused: 0, retriedWhileUp: {} }
/** The calls not settled yet, for the parent's watchdog: what a stuck instance is waiting on. */
const pending = new Map()
let nextCall = 0
const outcome = { uploads: {}, refusedUploads: [], errors: [] }

/** Runs `call` until it settles; transient failures during an outage wait for the parent's 'up'. */
async function settle(label, call) {
  const id = nextCall++
  const entry = { label, attempt: 0 }
  pending.set(id, entry)
  try {
    // Bounded by time, not by a count of attempts: a call that fails fast (the pool's fast
    // failure while its connects fail, PgBouncer's wait before it logs in to a restarted server)
    // could spend any count of attempts before the parent's 'down' reaches this process, or
    // after its 'up'. The parent's watchdog fails the test long before this if nothing settles.
    const deadline = Date.now() + 120_000
    for (let attempt = 0; Date.now() < deadline; attempt++) {
      entry.attempt = attempt
      stats.calls++
      try {
        return { value: await call(attempt) }
      } catch (error) {
        if (!TRANSIENT.has(error.code)) return { error }
        stats.retries++
        if (!down) {
          const what = `${error.code}: ${String(error.message).slice(0, 80)}`
          stats.retriedWhileUp[what] = (stats.retriedWhileUp[what] ?? 0) + 1
        }
        entry.label = `${label} (last: ${error.code}: ${String(error.message).slice(0, 160)})`
        if (down) await new Promise((resolve) => upWaiters.push(resolve))
        // As an app's retry would: back off a little (1 ms, growing to 50 ms) while the
        // database is back but not yet answering, rather than spin.
        else await new Promise((resolve) => setTimeout(resolve, Math.min(50, 1 + attempt)))
      }
    }
    throw new Error(`a call did not settle in 120 s (${entry.attempt + 1} attempts)`)
  } finally {
    pending.delete(id)
  }
}

function note(label, result, allowed = []) {
  if (result.error && !allowed.includes(result.error.code)) {
    outcome.errors.push(`${label}: ${result.error.code} ${result.error.message}`)
  }
  if (result.error?.code === 'QUOTA_EXCEEDED') stats.refused++
}

async function caller(index) {
  const { users, projects, copyTargets, templates } = plan
  const u = (plan.instance * 64 + index) % users.length
  const [user, project] = [users[u], projects[u]]
  const key = (what, i) => `i${plan.instance}-c${index}-${what}-${i}`
  for (let i = 0; i < plan.rounds; i++) {
    const size = 100 + ((index * 7919 + i * 104729) % 1900)

    const upload = await settle(`recordUpload ${key('up', i)}`, () => quota.recordUpload(user, project, size, { uploadId: key('up', i) }))
    note('recordUpload', upload, ['QUOTA_EXCEEDED'])
    if (upload.value) outcome.uploads[key('up', i)] = size
    else outcome.refusedUploads.push(key('up', i))

    const reservationId = plan.reservationIds[index * plan.rounds + i]
    const held = await settle(`reserveUpload ${reservationId}`, () => quota.reserveUpload(user, project, size, { reservationId, ttlMs: 600_000 }))
    note('reserveUpload', held, ['QUOTA_EXCEEDED'])
    if (held.value) {
      // A commit whose reply was lost answers duplicate: true on the retry.
      const committed = await settle(`commitUpload ${reservationId}`, () => quota.commitUpload(user, reservationId, size - 50))
      note('commitUpload', committed)
    }

    note('checkQuota', await settle(`checkQuota ${user}`, () => quota.checkQuota(user, size)))

    const doomed = await settle(`recordUpload ${key('gone', i)}`, () => quota.recordUpload(user, project, 64, { uploadId: key('gone', i) }))
    note('recordUpload', doomed, ['QUOTA_EXCEEDED'])
    if (doomed.value) {
      const deleted = await settle(`recordDeletion ${key('del', i)}`, () => quota.recordDeletion(user, project, 64, { deletionId: key('del', i) }))
      note('recordDeletion', deleted)
      if (deleted.error) outcome.uploads[key('gone', i)] = 64
    } else {
      outcome.refusedUploads.push(key('gone', i))
    }
    process.send({ progress: 1 })
  }
  const target = copyTargets[plan.instance * 64 + index]
  const copied = await settle(`copyProject ${target}`, () => quota.copyProject(user, templates[u], target))
  // A copy whose files landed before the connection was cut cannot count them again.
  note('copyProject', copied, ['QUOTA_EXCEEDED', 'CONFLICT'])
  process.send({ copied: 1 })
}

try {
  await Promise.all(Array.from({ length: 64 }, (_, index) => caller(index)))
  await quota.close()
  process.send({ done: { ...outcome, stats } })
} catch (error) {
  process.send({ failed: String(error.stack ?? error) })
  process.exitCode = 1
} finally {
  // The IPC channel (and its 'message' listener) would keep this process alive.
  process.disconnect()
}
