import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { connect, createServer } from 'node:net'
import * as quota from '../index.js'
import { createTestDatabase, insertProject, rejection, TEST_POOLER } from './helpers/db.mjs'

const { createClient, StorageQuotaError } = quota
const db = await createTestDatabase('client')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
await client.migrate()
after(() => client.close())

async function tableCounts() {
  const { rows } = await db.query(
    `SELECT (SELECT count(*) FROM user_quotas)::int AS quotas,
            (SELECT count(*) FROM quota_ledger)::int AS ledger,
            (SELECT count(*) FROM project_storage_paths)::int AS paths`,
  )
  return rows[0]
}

test('bad arguments reject with INVALID_ARGUMENT and write nothing', async () => {
  const project = await insertProject(db, 'user_valid')
  const before = await tableCounts()
  const badBytes = [-1, 0.5, NaN, Infinity, 2 ** 53, '10', null, undefined, 10n, {}]
  const badUsers = ['', '../x', 'a b', 42, null, 'x'.repeat(200), "user'; DROP TABLE user_quotas; --"]
  const badProjects = ['', 'not.a.uuid', '../../etc', 7, null, `${project}/x`, '-1', 'x'.repeat(129)]
  const calls = [
    ...badBytes.map((b) => () => client.checkQuota('user_valid', b)),
    ...badBytes.map((b) => () => client.recordUpload('user_valid', project, b)),
    ...badUsers.map((u) => () => client.checkQuota(u, 1)),
    ...badUsers.map((u) => () => client.recordUpload(u, project, 1)),
    ...badUsers.map((u) => () => client.allocateProjectPath(u, project)),
    ...badProjects.map((p) => () => client.recordUpload('user_valid', p, 1)),
    ...badProjects.map((p) => () => client.allocateProjectPath('user_valid', p)),
    () => client.recordUpload('user_valid', project, 1, { uploadId: '' }),
    () => client.recordUpload('user_valid', project, 1, { uploadId: 'has space' }),
    () => client.recordUpload('user_valid', project, 1, { uploadId: 'x'.repeat(201) }),
    () => client.recordUpload('user_valid', project, 1, { unknownOption: true }),
    () => client.rollback(0),
    () => client.rollback(1.5),
  ]
  for (const call of calls) {
    const error = await rejection(call())
    assert.ok(error instanceof StorageQuotaError, String(error))
    assert.equal(error.code, 'INVALID_ARGUMENT', `${call}: ${error.message}`)
    assert.ok(error.message.length > 10)
  }
  assert.deepEqual(await tableCounts(), before)
  // Well-formed ids of another type or spelling are ids of no project, not errors.
  for (const other of ['not-a-uuid', `${project}x`, project.replaceAll('-', ''), '42']) {
    assert.equal((await rejection(client.recordUpload('user_valid', other, 1))).code, 'NOT_FOUND', other)
  }
  assert.deepEqual(await tableCounts(), before)
})

test('the Rust side validates too, for callers that bypass the JS layer', async () => {
  const { NativeClient } = await import('../binding.js')
  const native = new NativeClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  for (const call of [
    () => native.checkQuota('user_x', [-5]),
    () => native.checkQuota('user_x', [1, 1.5]),
    () => native.checkQuota('user_x', [Number.NaN]),
    () => native.checkQuota('user_x', [2 ** 52, 2 ** 52]),
    () => native.checkQuota('../x', [1]),
    () => native.reserveUpload('user_x', '00000000-0000-4000-8000-000000000000', 1, 10),
    () => native.commitUpload('user_x', 'not-a-uuid', 1),
    () => native.setQuotaLimit('user_x', -1, null, null),
    () => native.allocateProjectPath('user_x', '../../etc/passwd'),
  ]) {
    const error = await rejection(call())
    // A real Error with its code as a property, on an async rejection (no JSON in the message).
    assert.ok(error instanceof Error)
    assert.equal(error.code, 'INVALID_ARGUMENT')
    assert.ok(!error.message.startsWith('{'), error.message)
  }
  native.close()
})

test('error codes survive the async boundary as StorageQuotaError fields', async () => {
  const error = await rejection(client.recordUpload('user_valid', '00000000-0000-4000-8000-000000000000', 1))
  assert.ok(error instanceof StorageQuotaError)
  assert.equal(error.name, 'StorageQuotaError')
  assert.equal(error.code, 'NOT_FOUND')
  assert.equal(error.message, 'project 00000000-0000-4000-8000-000000000000 does not exist')
})

test('an unreachable server is DB_UNAVAILABLE within the connect timeout, without the password', async () => {
  // A port with nothing listening: connection refused at once.
  const refused = createClient({ databaseUrl: 'postgres://app:hunter2@127.0.0.1:1/app', connectTimeoutMs: 2000 })
  const started = Date.now()
  const error = await rejection(refused.checkQuota('user_a', 1))
  assert.equal(error.code, 'DB_UNAVAILABLE')
  assert.ok(Date.now() - started < 2000)
  assert.doesNotMatch(error.message, /hunter2/)
  assert.match(error.message, /127\.0\.0\.1:1\/app/)
  assert.equal(error.sqlState, undefined, 'no server answered')
  await refused.close()

  // A server that refuses with a reason: its SQLSTATE comes along (3D000, no such database;
  // a PgBouncer in between refuses with its own, 08P01).
  const missing = new URL(db.url)
  missing.pathname = '/sq_no_such_database'
  const absent = createClient({ databaseUrl: missing.href })
  const noDatabase = await rejection(absent.checkQuota('user_a', 1))
  assert.equal(noDatabase.code, 'DB_UNAVAILABLE', String(noDatabase))
  assert.equal(noDatabase.sqlState, TEST_POOLER ? '08P01' : '3D000', noDatabase.message)
  assert.match(noDatabase.message, /sq_no_such_database/)
  await absent.close()

  // A server that accepts but never answers: the connect timeout bounds the wait.
  const sockets = new Set()
  const silent = createServer((socket) => sockets.add(socket))
  await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
  const port = silent.address().port
  const hanging = createClient({ databaseUrl: `postgres://app:hunter2@127.0.0.1:${port}/app`, connectTimeoutMs: 300 })
  const t0 = Date.now()
  const timeoutError = await rejection(hanging.checkQuota('user_a', 1))
  const waited = Date.now() - t0
  assert.equal(timeoutError.code, 'DB_UNAVAILABLE')
  assert.ok(waited >= 250 && waited < 3000, `waited ${waited} ms`)
  assert.doesNotMatch(timeoutError.message, /hunter2/)
  await hanging.close()
  for (const socket of sockets) socket.destroy()
  silent.close()
})

test('a connection attempt the server never answers gives its place in the pool back', async () => {
  // In front of PostgreSQL: the first connection is accepted and never answered (a pooler or
  // server that hangs after the TCP handshake); every later one is passed through.
  const upstream = new URL(db.url)
  const sockets = new Set()
  let accepted = 0
  let gaveUp
  const givenUp = new Promise((resolve) => (gaveUp = resolve))
  const proxy = createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    if (accepted++ === 0) {
      socket.resume() // read (and drop) what the client sends, so its FIN is seen
      socket.on('end', gaveUp)
      return
    }
    const server = connect(Number(upstream.port || 5432), upstream.hostname)
    sockets.add(server)
    server.on('error', () => socket.destroy())
    socket.on('close', () => server.destroy())
    server.on('close', () => socket.destroy())
    socket.pipe(server).pipe(socket)
  })
  await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve))
  const through = new URL(db.url)
  through.host = `127.0.0.1:${proxy.address().port}`
  const one = createClient({ databaseUrl: through.toString(), storageRoot: db.storageRoot, poolSize: 1, connectTimeoutMs: 300, logger: false })
  try {
    const error = await rejection(one.checkQuota('user_slot', 1))
    assert.equal(error.code, 'DB_UNAVAILABLE')
    // The client abandons the attempt that hangs (it closes that socket)…
    const guard = new Promise((_, reject) => setTimeout(() => reject(new Error('the hung attempt was never abandoned')), 5000).unref())
    await Promise.race([givenUp, guard])
    // …so the pool's only place is free again: the next call connects and answers.
    const answer = await one.checkQuota('user_slot', 1)
    assert.equal(answer.allowed, true)
    assert.equal(accepted, 2)
  } finally {
    await one.close()
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => proxy.close(resolve))
  }
})

test('a malformed or missing URL is DB_UNAVAILABLE on the first call, not a throw at creation', async () => {
  const malformed = createClient({ databaseUrl: 'postgres://user:pa55word@[nope' })
  const error = await rejection(malformed.checkQuota('user_a', 1))
  assert.equal(error.code, 'DB_UNAVAILABLE')
  assert.doesNotMatch(error.message, /pa55word/)
  const missing = new quota.StorageQuotaClient({})
  assert.equal((await rejection(missing.checkQuota('user_a', 1))).code, 'DB_UNAVAILABLE')
})

test('bad options throw INVALID_ARGUMENT at creation', () => {
  for (const options of [{ poolSize: 0 }, { defaultQuotaBytes: -1 }, { connectTimeoutMs: 0 }, { nope: 1 }, { storageRoot: '' }]) {
    assert.throws(() => createClient(options), (e) => e.code === 'INVALID_ARGUMENT', JSON.stringify(options))
  }
})

test('close() lets every call made before it finish, on a fresh or a warm pool, then refuses with CLIENT_CLOSED', async () => {
  const user = 'user_close'
  const project = await insertProject(db, user)
  // Calls of every path: handed over together (checks, uploads, reservations, commits,
  // deletions), alone (usage, paths), and several steps long (backfill). On a fresh client
  // (the pool opens for them) and on a warm one, 20 rounds each: a call's task that had not yet
  // taken the pool when close() ran once answered CLIENT_CLOSED about one time in five.
  for (let round = 0; round < 40; round++) {
    const c = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
    if (round % 2) await c.checkQuota(user, 1)
    const held = await c.reserveUpload(user, project, 1)
    let chained
    const inFlight = [
      ...Array.from({ length: 8 }, () => c.checkQuota(user, 1)),
      c.recordUpload(user, project, 1, { uploadId: `close-${round}` }),
      c.reserveUpload(user, project, 1).then((r) => {
        // Made after close(): refused.
        chained = c.cancelUpload(user, r.reservationId).catch((e) => e)
      }),
      c.commitUpload(user, held.reservationId, 1),
      c.recordDeletion(user, project, 1, { deletionId: `close-del-${round}` }),
      c.getUsage(user),
      c.allocateProjectPath(user, project),
      c.backfill(),
    ]
    await c.close()
    const settled = await Promise.allSettled(inFlight)
    const refused = settled.filter((r) => r.status === 'rejected').map((r) => `${r.reason.code}: ${r.reason.message}`)
    assert.deepEqual(refused, [], `round ${round}: every call made before close() finished`)
    assert.equal((await chained).code, 'CLIENT_CLOSED', `round ${round}: a call made after close() is refused`)
    assert.equal((await rejection(c.checkQuota(user, 1))).code, 'CLIENT_CLOSED')
    assert.equal((await rejection(c.getUsage(user))).code, 'CLIENT_CLOSED')
  }
})

test('the module-level functions use a default client from DATABASE_URL and STORAGE_ROOT', async () => {
  const saved = { url: process.env.DATABASE_URL, root: process.env.STORAGE_ROOT }
  process.env.DATABASE_URL = db.url
  process.env.STORAGE_ROOT = db.storageRoot
  try {
    await quota.closeDefaultClient()
    const user = 'user_default'
    const project = await insertProject(db, user)
    const path = await quota.allocateProjectPath(user, project)
    assert.equal(path.path, `${db.storageRoot}/${user}/${project}/`)
    const recorded = await quota.recordUpload(user, project, 2048, { uploadId: 'default-1' })
    assert.equal(recorded.usedBytes, 2048)
    assert.equal((await quota.checkQuota(user, 1)).usedBytes, 2048)
    assert.equal(quota.getDefaultClient(), quota.getDefaultClient())
  } finally {
    await quota.closeDefaultClient()
    if (saved.url === undefined) delete process.env.DATABASE_URL
    else process.env.DATABASE_URL = saved.url
    if (saved.root === undefined) delete process.env.STORAGE_ROOT
    else process.env.STORAGE_ROOT = saved.root
  }
})

test('formatBytes matches the Rust messages: binary units, one decimal', () => {
  assert.equal(quota.formatBytes(0), '0 B')
  assert.equal(quota.formatBytes(1536), '1.5 KB')
  assert.equal(quota.formatBytes(13107200), '12.5 MB')
  assert.equal(quota.formatBytes(327155712), '312 MB')
  assert.equal(quota.formatBytes(1073741824), '1 GB')
  assert.equal(quota.formatBytes(1073741823), '1 GB')
})

test('the Zod schemas accept what the addon returns', async () => {
  const user = 'user_schema'
  const project = await insertProject(db, user)
  quota.QuotaCheckSchema.parse(await client.checkQuota(user, 5))
  quota.RecordedUploadSchema.parse(await client.recordUpload(user, project, 5))
  quota.ProjectStoragePathSchema.parse(await client.allocateProjectPath(user, project))
  const { rows } = await db.query(
    `SELECT id::text, user_id AS "userId", limit_bytes::float8 AS "limitBytes", used_bytes::float8 AS "usedBytes",
            reserved_bytes::float8 AS "reservedBytes", created_at AS "createdAt", updated_at AS "updatedAt"
       FROM user_quotas WHERE user_id = $1`,
    [user],
  )
  quota.UserQuotaSchema.parse(rows[0])
  const job = await db.query(
    `INSERT INTO simulation_jobs (project_id, user_id, parameters) VALUES ($1, $2, '{"steps": 10}')
     RETURNING id::text, project_id::text AS "projectId", user_id AS "userId", status, parameters,
               output_path AS "outputPath", error, created_at AS "createdAt", updated_at AS "updatedAt",
               started_at AS "startedAt", finished_at AS "finishedAt"`,
    [project, user],
  )
  assert.equal(quota.SimulationJobSchema.parse(job.rows[0]).status, 'queued')
  await assert.rejects(db.query(`UPDATE simulation_jobs SET status = 'exploded'`), { code: '23514' })
})

test('closeDefaultClient() then a module-level call: a new default client from the environment', async () => {
  const saved = { url: process.env.DATABASE_URL, root: process.env.STORAGE_ROOT }
  process.env.DATABASE_URL = db.url
  process.env.STORAGE_ROOT = db.storageRoot
  try {
    const first = quota.getDefaultClient()
    assert.equal((await quota.checkQuota('user_default', 1)).allowed, true)
    await quota.closeDefaultClient()
    // The closed client refuses, the module functions go on with a new one.
    assert.equal((await rejection(first.checkQuota('user_default', 1))).code, 'CLIENT_CLOSED')
    assert.equal((await quota.checkQuota('user_default', 1)).allowed, true)
    assert.notEqual(quota.getDefaultClient(), first)
  } finally {
    await quota.closeDefaultClient()
    for (const [key, value] of [['DATABASE_URL', saved.url], ['STORAGE_ROOT', saved.root]]) {
      if (value === undefined) delete process.env[key]
      else process.env[key] = value
    }
  }
})
