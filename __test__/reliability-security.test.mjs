// Security: SQL is parameterized everywhere (injection strings in every argument that can carry
// them are stored verbatim, the others are refused), one user can never read, charge, release
// or allocate for another user's project, and no password ever reaches an error or a log line.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { createClient } from '../index.js'
import { createTestDatabase, insertProject, rejection } from './helpers/db.mjs'
import { databaseSnapshot } from './helpers/operations.mjs'
import { startOwnPostgres } from './helpers/own-postgres.mjs'

// Printable ASCII without spaces: valid upload and deletion ids, so they reach SQL.
const INJECTIONS = [
  "x');DROP/**/TABLE/**/user_quotas;--",
  "'/**/OR/**/'1'='1",
  "';DELETE/**/FROM/**/quota_ledger;--",
  '$1);TRUNCATE/**/projects;--',
  "\\';SELECT/**/pg_sleep(10);--",
  '"quoted"||chr(39)',
]
// With spaces and other characters: valid only where free text is allowed (audit fields).
const FREE_TEXT = ["x'); DROP TABLE user_quotas; --", "Robert'); DROP TABLE quota_limit_changes;--", "' OR 1=1 --", '$$ LANGUAGE sql $$']

async function tablesExist(db) {
  const { rows } = await db.query(
    `SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'
       AND tablename IN ('user_quotas', 'quota_ledger', 'projects', 'project_storage_paths', 'quota_limit_changes', 'quota_reservations')`,
  )
  return rows[0].n
}

test('injection strings in every argument are stored verbatim or refused, never executed', async () => {
  const db = await createTestDatabase('rel_sec_sql')
  // A storage root with quotes and a semicolon: the migration takes it as a parameter.
  const storageRoot = join(db.storageRoot, "it's;--")
  const client = createClient({ databaseUrl: db.url, storageRoot, applicationName: "app'; DROP TABLE projects; --" })
  after(() => client.close())
  await client.migrate()
  const user = 'user_sec'
  const project = await insertProject(db, user)
  await client.setQuotaLimit(user, 10_000_000)

  for (const [i, id] of INJECTIONS.entries()) {
    const recorded = await client.recordUpload(user, project, 100 + i, { uploadId: id })
    assert.equal(recorded.uploadId, id)
    const again = await client.recordUpload(user, project, 100 + i, { uploadId: id })
    assert.equal(again.duplicate, true, 'the same injection string is recognised as the same id')
  }
  const released = await client.recordDeletion(user, project, 50, { deletionId: INJECTIONS[0] })
  assert.equal(released.releasedBytes, 50)
  for (const text of FREE_TEXT) await client.setQuotaLimit(user, 10_000_000, { changedBy: text, reason: text })
  const path = await client.allocateProjectPath(user, project)
  assert.ok(path.path.startsWith(storageRoot))

  // The database has every table and holds the strings as data.
  assert.equal(await tablesExist(db), 6)
  const keys = await db.query(`SELECT idempotency_key FROM quota_ledger WHERE user_id = $1 AND kind = 'upload' ORDER BY id`, [user])
  assert.deepEqual(keys.rows.map((r) => r.idempotency_key), INJECTIONS)
  const audit = await db.query(`SELECT changed_by, reason FROM quota_limit_changes WHERE changed_by IS NOT NULL ORDER BY id`)
  assert.deepEqual(audit.rows.map((r) => r.changed_by), FREE_TEXT)
  const name = await db.query(`SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'app%'`, [db.name])
  assert.deepEqual(name.rows.map((r) => r.application_name), ["app'; DROP TABLE projects; --"])

  // Where an injection string cannot be valid (ids), it is refused before any SQL.
  const before = await databaseSnapshot(db)
  for (const bad of [...INJECTIONS, ...FREE_TEXT]) {
    for (const call of [
      () => client.checkQuota(bad, 1),
      () => client.recordUpload(bad, project, 1),
      () => client.recordUpload(user, bad, 1),
      () => client.allocateProjectPath(user, bad),
      () => client.getUsage(bad),
      () => client.reconcile(bad, { fix: true }),
      () => client.commitUpload(bad, '00000000-0000-4000-8000-000000000000'),
      () => client.setQuotaLimit(bad, 1),
      () => client.removeProject(user, bad),
    ]) {
      assert.equal((await rejection(call())).code, 'INVALID_ARGUMENT')
    }
  }
  for (const bad of FREE_TEXT) {
    assert.equal((await rejection(client.recordUpload(user, project, 1, { uploadId: bad }))).code, 'INVALID_ARGUMENT')
  }
  assert.deepEqual(await databaseSnapshot(db), before)
})

test("one user can never read, charge, release, copy or allocate another user's project", async () => {
  const db = await createTestDatabase('rel_sec_owner')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  after(() => client.close())
  await client.migrate()
  const alice = 'user_alice'
  const mallory = 'user_mallory'
  const aliceProject = await insertProject(db, alice, 'private')
  const malloryProject = await insertProject(db, mallory, 'own')
  const malloryEmpty = await insertProject(db, mallory, 'empty')
  await client.recordUpload(alice, aliceProject, 1000, { uploadId: 'alice-1' })
  await client.allocateProjectPath(alice, aliceProject)
  const reservation = await client.reserveUpload(alice, aliceProject, 500)
  await client.recordUpload(mallory, malloryProject, 10, { uploadId: 'mallory-1' })
  await client.allocateProjectPath(mallory, malloryProject)
  const before = await databaseSnapshot(db)

  const attempts = {
    recordUpload: () => client.recordUpload(mallory, aliceProject, 1, { uploadId: 'steal' }),
    allocateProjectPath: () => client.allocateProjectPath(mallory, aliceProject),
    reserveUpload: () => client.reserveUpload(mallory, aliceProject, 1),
    commitUpload: () => client.commitUpload(mallory, reservation.reservationId, 1),
    cancelUpload: () => client.cancelUpload(mallory, reservation.reservationId),
    'recordDeletion by upload id': () => client.recordDeletion(mallory, aliceProject, undefined, { uploadId: 'alice-1' }),
    'recordDeletion of bytes': () => client.recordDeletion(mallory, aliceProject, 1000),
    'recordDeletion of her upload from my project': () => client.recordDeletion(mallory, malloryProject, undefined, { uploadId: 'alice-1' }),
    registerProject: () => client.registerProject(mallory, aliceProject),
    'copyProject from hers': () => client.copyProject(mallory, aliceProject, malloryEmpty),
    'copyProject into hers': () => client.copyProject(mallory, malloryProject, aliceProject),
    removeProject: () => client.removeProject(mallory, aliceProject),
  }
  for (const [what, call] of Object.entries(attempts)) {
    const error = await rejection(call())
    assert.ok(['FORBIDDEN', 'NOT_FOUND'].includes(error.code), `${what}: ${error.code} ${error.message}`)
    assert.ok(!error.message.includes('1000') || what.includes('bytes'), `${what} leaks Alice's numbers: ${error.message}`)
  }
  // Reads: Mallory's usage lists only Mallory's projects and numbers.
  const usage = await client.getUsage(mallory, { projects: true })
  assert.equal(usage.usedBytes, 10)
  assert.ok(usage.projects.every((p) => p.projectId !== aliceProject))
  const check = await client.checkQuota(mallory, 1)
  assert.equal(check.usedBytes, 10)
  assert.deepEqual(await databaseSnapshot(db), before, 'nothing changed for anyone')
})

/** Runs the secret child; returns its stdout and stderr. */
async function runSecretChild(env, onLine) {
  const child = spawn(process.execPath, [fileURLToPath(new URL('./helpers/secret-child.mjs', import.meta.url))], {
    env: { ...process.env, STORAGE_QUOTA_LOG: 'warn', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stderr.on('data', (chunk) => (stderr += chunk))
  child.stdout.on('data', async (chunk) => {
    stdout += chunk
    for (const line of String(chunk).split('\n')) if (line) await onLine(line, child)
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  const code = await new Promise((resolve) => child.on('exit', resolve))
  clearTimeout(timer)
  return { code, stdout, stderr }
}

test('connection strings and passwords never appear in errors or logs, through failures and a lost connection', async () => {
  const db = await createTestDatabase('rel_sec_secret')
  const password = 'Hunter2-s3cret-pw'
  // Direct: the child's connection is cut by application_name, which a pooler does not pass on.
  const good = new URL(db.directUrl)
  good.username = 'postgres'
  good.password = password
  const setup = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  await setup.migrate()
  await setup.close()
  const project = await insertProject(db, 'user_secret')
  await db.query(`INSERT INTO user_quotas (user_id, limit_bytes) VALUES ('user_secret', 1000)`)
  const own = await startOwnPostgres('secret')
  const wrong = new URL(own.url)
  wrong.password = `${password}-wrong`

  const admin = new pg.Client({ connectionString: db.directUrl })
  admin.on('error', () => {})
  await admin.connect()
  after(() => admin.end())
  const { code, stdout, stderr } = await runSecretChild(
    { GOOD_URL: good.toString(), WRONG_PASSWORD_URL: wrong.toString(), PROJECT_ID: project, STORAGE_ROOT: db.storageRoot },
    async (line, child) => {
      if (line === 'READY') {
        await admin.query('BEGIN')
        await admin.query(`SELECT 1 FROM user_quotas WHERE user_id = 'user_secret' FOR UPDATE`)
        child.stdin.write('go\n')
      } else if (line === 'BLOCKED') {
        await new Promise((resolve) => setTimeout(resolve, 300))
        await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sq-secret-child'`)
        await admin.query('COMMIT')
      }
    },
  )
  const output = `${stdout}\n${stderr}`
  assert.equal(code, 0, output)
  // Every scenario ran and failed the way it should.
  for (const [label, expected] of [
    ['refused', 'DB_UNAVAILABLE'],
    ['no such database', 'DB_UNAVAILABLE'],
    ['no such role', 'DB_UNAVAILABLE'],
    ['wrong password', 'DB_UNAVAILABLE'],
    ['malformed', 'DB_UNAVAILABLE'],
    ['not a url', 'DB_UNAVAILABLE'],
    ['lost', 'DB_UNAVAILABLE'],
  ]) {
    assert.match(stdout, new RegExp(`^${label}: ${expected} `, 'm'), `${label}:\n${output}`)
  }
  assert.match(stdout, /password authentication failed/)
  assert.match(stdout, /after loss: recorded, duplicate=false/)
  assert.doesNotMatch(stdout, /^retry 0:/m, 'the immediate retry after the loss succeeded')
  assert.match(stderr, /"event":"connection_lost"/, 'the lost connection was logged')
  for (const secret of [password, encodeURIComponent(password), own.password, `${password}-wrong`]) {
    assert.ok(!output.includes(secret), `the password appears in the output:\n${output}`)
  }
  // The only URL with credentials allowed is the format hint "postgres://user:password@host…".
  const urls = output.match(/postgres:\/\/[^\s"'@]*:[^\s"'@]*@/g) ?? []
  assert.deepEqual([...new Set(urls)].filter((u) => u !== 'postgres://user:password@'), [], 'no connection string with credentials')
})

test('the CLI never prints the password of a database it cannot reach', async () => {
  const root = await mkdtemp(join(tmpdir(), 'sq-sec-cli-'))
  after(() => rm(root, { recursive: true, force: true }))
  const cli = fileURLToPath(new URL('../bin/storage-quota.js', import.meta.url))
  for (const url of ['postgres://app:Cli-s3cret@127.0.0.1:1/app', 'postgres://app:Cli-s3cret@[bad/app']) {
    const child = spawn(process.execPath, [cli, 'migrate', '--database-url', url, '--storage-root', root])
    let output = ''
    child.stdout.on('data', (c) => (output += c))
    child.stderr.on('data', (c) => (output += c))
    const code = await new Promise((resolve) => child.on('exit', resolve))
    assert.equal(code, 1)
    assert.match(output, /DB_UNAVAILABLE/)
    assert.ok(!output.includes('Cli-s3cret'), output)
  }
})
