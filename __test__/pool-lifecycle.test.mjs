// The pool for serverless functions and many instances: nothing opened before the first call,
// idle connections closed after idleTimeoutMs (down to minConnections), old ones replaced after
// maxLifetimeMs. Counted on the server (pg_stat_activity, by application_name), directly: a
// pooler would show its own connections.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { createClient } from '../index.js'
import { createTestDatabase, rejection } from './helpers/db.mjs'

const db = await createTestDatabase('pool_life')
const clients = []
function client(options) {
  const name = `sq-pool-${randomBytes(4).toString('hex')}`
  const c = createClient({ databaseUrl: db.directUrl, storageRoot: db.storageRoot, logger: false, applicationName: name, ...options })
  clients.push(c)
  return { quota: c, name }
}
after(() => Promise.all(clients.map((c) => c.close())))
const setup = client({}).quota
await setup.migrate()
await setup.close()

async function backends(name) {
  const { rows } = await db.query('SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid', [name])
  return rows.map((r) => r.pid)
}

/** Polls `read` until `ok(value)`, at most 15 s; resolves to the last value. */
async function until(read, ok) {
  const deadline = Date.now() + 15_000
  let value = await read()
  while (!ok(value) && Date.now() < deadline) value = await read()
  return value
}

const burst = (quota) => Promise.all(Array.from({ length: 12 }, (_, i) => quota.checkQuota(`pool_user_${i}`, 1)))

test('no connection before the first call; idle ones close after idleTimeoutMs, down to minConnections', async () => {
  const lazy = client({ poolSize: 6, idleTimeoutMs: 300 })
  const kept = client({ poolSize: 6, idleTimeoutMs: 300, minConnections: 2 })
  assert.deepEqual(await backends(lazy.name), [], 'creating a client connects nothing')
  await Promise.all([burst(lazy.quota), burst(kept.quota)])
  assert.ok((await backends(lazy.name)).length >= 1)
  // bb8 opens minConnections in the background; a batched burst may itself need only one.
  assert.ok((await until(() => backends(kept.name), (pids) => pids.length >= 2)).length >= 2, 'minConnections opened')
  assert.deepEqual(await until(() => backends(lazy.name), (pids) => pids.length === 0), [], 'the idle pool emptied')
  assert.equal((await until(() => backends(kept.name), (pids) => pids.length === 2)).length, 2, 'minConnections stay open')
  // And the emptied pool serves the next call at once.
  assert.equal((await lazy.quota.checkQuota('pool_user_0', 1)).allowed, true)
  // close() gives the kept ones back too.
  await Promise.all([lazy.quota.close(), kept.quota.close()])
  assert.deepEqual(await until(() => backends(kept.name), (pids) => pids.length === 0), [])
})

test('connections are replaced after maxLifetimeMs, without failing a call', async () => {
  const old = client({ poolSize: 1, idleTimeoutMs: 0, maxLifetimeMs: 400 })
  await old.quota.checkQuota('pool_life', 1)
  const [first] = await backends(old.name)
  assert.ok(first)
  const later = await until(
    async () => {
      await old.quota.checkQuota('pool_life', 1)
      return backends(old.name)
    },
    (pids) => pids.length > 0 && !pids.includes(first),
  )
  assert.ok(!later.includes(first), `the first connection (${first}) was never replaced`)
  await old.quota.close()
})

test('bad pool options are INVALID_ARGUMENT when the client is created', async () => {
  for (const options of [{ minConnections: 11 }, { minConnections: -1 }, { idleTimeoutMs: 1.5 }, { maxLifetimeMs: -1 }, { statementCache: 'no' }]) {
    const error = await rejection((async () => createClient({ databaseUrl: db.directUrl, ...options }))())
    assert.equal(error.code, 'INVALID_ARGUMENT', JSON.stringify(options))
  }
})
