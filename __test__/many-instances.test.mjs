// Many instances, one truth: 4 Node processes × 64 concurrent callers on the same users, through
// PgBouncer in transaction mode, with the pooler restarted and then PostgreSQL itself killed
// (immediate shutdown) and restarted under load.
process.env.STORAGE_QUOTA_LOG = 'off' // the outages below log connection_lost by design
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { fork } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { createClient } from '../index.js'
import { startOwnPostgres } from './helpers/own-postgres.mjs'
import { startPgBouncer } from './helpers/pgbouncer.mjs'

const INSTANCES = 4
const CALLERS = 64
const ROUNDS = 3
const USERS = 8
const LIMIT = 120_000

const own = await startOwnPostgres('many')
const bouncer = await startPgBouncer({
  server: { port: own.port, user: 'postgres', password: own.password },
  poolMode: 'transaction',
  defaultPoolSize: 10,
  tag: 'pgb-many',
})
const storageRoot = await mkdtemp(join(tmpdir(), 'sq-many-'))
after(() => rm(storageRoot, { recursive: true, force: true }))
const admin = createClient({ databaseUrl: own.url, storageRoot, logger: false })
after(() => admin.close())

async function insertProjects(owners) {
  const { rows } = await own.query(
    'INSERT INTO projects (user_id, name) SELECT u, $2 FROM unnest($1::text[]) WITH ORDINALITY AS t(u, n) ORDER BY n RETURNING id',
    [owners, 'p'],
  )
  return rows.map((r) => r.id)
}

function runInstance(instance, plan, onProgress, onActivity) {
  const child = fork(fileURLToPath(new URL('./helpers/instance-worker.mjs', import.meta.url)), {
    env: {
      ...process.env,
      URL: bouncer.url('app'),
      STORAGE_ROOT: storageRoot,
      PLAN: JSON.stringify({ ...plan, instance }),
    },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  })
  let output = ''
  child.stdout.on('data', (c) => (output += c))
  child.stderr.on('data', (c) => (output += c))
  let report
  const dumps = []
  child.on('message', (message) => {
    if (message.pending) dumps.push(message.pending)
    if (message.progress) onProgress()
    if (message.copied) onActivity()
    if (message.done || message.failed) report = message
  })
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, report, output })))
  return { child, exited, dumps }
}

/**
 * A watchdog for the load below: when nothing has moved for `quietMs` (no progress report, no
 * copy settled, no outage begun or ended) it rejects with what each instance is still waiting
 * on, the outage in progress and both servers' last log lines, so a hang is a failure that says
 * where it is.
 */
function watchdog({ quietMs, lastActivity, workers, describe }) {
  let timer
  const fired = new Promise((_, reject) => {
    timer = setInterval(async () => {
      if (Date.now() - lastActivity() < quietMs) return
      clearInterval(timer)
      for (const { child } of workers) if (child.connected) child.send('dump')
      const answered = Promise.all(
        workers.map(({ dumps, child }) =>
          new Promise((resolve) => {
            const check = setInterval(() => {
              if (dumps.length || !child.connected) resolve(clearInterval(check))
            }, 50)
          }),
        ),
      )
      await Promise.race([answered, new Promise((resolve) => setTimeout(resolve, 5000))])
      const pending = workers.map(({ dumps, child }, i) => {
        const state = child.exitCode === null && child.signalCode === null ? 'running' : `exited ${child.exitCode ?? child.signalCode}`
        return `instance ${i} (${state}): ${JSON.stringify(dumps.at(-1) ?? 'no answer').slice(0, 2000)}`
      })
      // What each instance waits on first: the servers' logs are long, and a report may be cut.
      reject(new Error(`nothing moved for ${quietMs} ms\n${pending.join('\n')}\n${describe()}`))
    }, 1000)
  })
  fired.catch(() => {})
  return { fired, stop: () => clearInterval(timer) }
}

test('4 processes × 64 callers through PgBouncer, pooler and database restarted mid-load: one truth', { timeout: 240_000 }, async () => {
  await admin.migrate()
  const users = Array.from({ length: USERS }, (_, i) => `many_u${i}`)
  const projects = await insertProjects(users)
  const templates = await insertProjects(users)
  for (const [i, user] of users.entries()) {
    await admin.setQuotaLimit(user, LIMIT)
    const { path } = await admin.allocateProjectPath(user, templates[i])
    await writeFile(join(path, 'template.bin'), Buffer.alloc(1000, 7))
  }
  const copyTargets = await insertProjects(Array.from({ length: INSTANCES * CALLERS }, (_, k) => users[k % USERS]))

  // Sampled after progress reports: never a user past the limit.
  const samples = { taken: 0, over: [] }
  let sampling = false
  async function sample() {
    if (sampling) return
    sampling = true
    const client = new pg.Client({ connectionString: own.url })
    client.on('error', () => {})
    try {
      await client.connect()
      const { rows } = await client.query(
        'SELECT user_id, used_bytes::float8 AS used, reserved_bytes::float8 AS reserved FROM user_quotas WHERE used_bytes + reserved_bytes > limit_bytes',
      )
      samples.taken++
      samples.over.push(...rows)
    } catch {
      // The database is down right now: nothing to sample.
    } finally {
      await client.end().catch(() => {})
      sampling = false
    }
  }

  const total = INSTANCES * CALLERS * ROUNDS
  let progress = 0
  let lastActivity = Date.now()
  let current = 'none'
  const outages = []
  const workers = []
  const broadcast = (message) => workers.forEach(({ child }) => child.connected && child.send(message))
  async function outage(label, act) {
    broadcast('down')
    current = label
    lastActivity = Date.now()
    try {
      await act()
      outages.push({ label, atProgress: progress })
    } catch (error) {
      outages.push({ label, error: String(error) })
    } finally {
      current = 'none'
      lastActivity = Date.now()
      broadcast('up')
    }
  }
  let chain = Promise.resolve()
  const onProgress = () => {
    progress++
    lastActivity = Date.now()
    if (progress % 16 === 0) sample()
    if (progress === Math.floor(total * 0.25)) chain = chain.then(() => outage('pgbouncer restart', () => bouncer.restart()))
    if (progress === Math.floor(total * 0.5)) {
      chain = chain.then(() =>
        outage('postgres killed and restarted', async () => {
          await own.kill()
          await own.start()
        }),
      )
    }
  }
  for (let instance = 0; instance < INSTANCES; instance++) {
    const reservationIds = Array.from({ length: CALLERS * ROUNDS }, () => randomUUID())
    const onActivity = () => (lastActivity = Date.now())
    workers.push(runInstance(instance, { users, projects, templates, copyTargets, rounds: ROUNDS, reservationIds }, onProgress, onActivity))
  }
  const dog = watchdog({
    quietMs: 60_000,
    lastActivity: () => lastActivity,
    workers,
    describe: () =>
      [
        `progress ${progress}/${total}; outage in progress: ${current}; done: ${JSON.stringify(outages)}`,
        `postgres log (tail):\n${own.log().slice(-3000)}`,
        `pgbouncer log (tail):\n${bouncer.log().slice(-3000)}`,
      ].join('\n'),
  })
  let ends
  try {
    ends = await Promise.race([Promise.all(workers.map((w) => w.exited)), dog.fired])
    await Promise.race([chain, dog.fired])
  } finally {
    dog.stop()
    for (const { child } of workers) if (child.exitCode === null) child.kill('SIGKILL')
  }

  // No process crashed; every call settled as it should.
  for (const [i, end] of ends.entries()) {
    assert.equal(end.code, 0, `instance ${i} exited with ${end.code ?? end.signal}:\n${end.output}\n${end.report?.failed ?? ''}`)
    assert.ok(end.report?.done, `instance ${i} reported nothing:\n${end.output}`)
    assert.deepEqual(end.report.done.errors, [], `instance ${i}`)
  }
  assert.deepEqual(
    outages.map((o) => o.label),
    ['pgbouncer restart', 'postgres killed and restarted'],
  )
  assert.ok(outages.every((o) => o.atProgress < total), 'both outages happened while callers were still working')
  const retries = ends.reduce((n, e) => n + e.report.done.stats.retries, 0)
  const refused = ends.reduce((n, e) => n + e.report.done.stats.refused, 0)
  if (process.env.MANY_DEBUG) console.error({ retries, refused, samples: samples.taken, calls: ends.reduce((n, e) => n + e.report.done.stats.calls, 0) }, ends.map((e) => e.report.done.stats.retriedWhileUp))
  assert.ok(retries > 0, 'the outages failed some calls (else they did not happen under load)')
  assert.ok(refused > 0, 'the limit was reached (else it was never tested)')

  // Nothing passed a limit at any sampled moment, nor at the end.
  assert.ok(samples.taken >= 5, `only ${samples.taken} samples`)
  assert.deepEqual(samples.over, [])
  // For every user, used_bytes is the ledger's sum and nothing is left held.
  const { rows } = await own.query(
    `SELECT q.user_id, q.used_bytes::float8 AS used, q.reserved_bytes::float8 AS reserved, q.limit_bytes::float8 AS limit,
            (SELECT coalesce(sum(bytes), 0)::float8 FROM quota_ledger l WHERE l.user_id = q.user_id) AS ledger
       FROM user_quotas q WHERE q.user_id = ANY($1) ORDER BY 1`,
    [users],
  )
  assert.equal(rows.length, USERS)
  for (const row of rows) {
    assert.equal(row.used, row.ledger, `${row.user_id}: used_bytes equals the ledger sum`)
    assert.equal(row.reserved, 0, `${row.user_id}: every reservation was committed`)
    assert.ok(row.used <= row.limit, `${row.user_id} within its limit`)
  }
  // Every upload that succeeded is in the ledger once, with its size; every refused one is not.
  const succeeded = Object.assign({}, ...ends.map((e) => e.report.done.uploads))
  const refusedKeys = ends.flatMap((e) => e.report.done.refusedUploads)
  const ledger = await own.query(
    `SELECT idempotency_key AS key, count(*)::int AS n, sum(bytes)::float8 AS bytes FROM quota_ledger
      WHERE idempotency_key = ANY($1) GROUP BY 1`,
    [[...Object.keys(succeeded), ...refusedKeys]],
  )
  const found = new Map(ledger.rows.map((r) => [r.key, r]))
  for (const [key, bytes] of Object.entries(succeeded)) {
    assert.deepEqual(found.get(key) && { n: found.get(key).n, bytes: found.get(key).bytes }, { n: 1, bytes }, key)
  }
  for (const key of refusedKeys) assert.equal(found.get(key), undefined, `${key} was refused yet counted`)
  const report = await admin.reconcile()
  assert.equal(report.driftedUsers, 0)
})
