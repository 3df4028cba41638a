import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createTestDatabase, MIGRATION_VERSIONS } from './helpers/db.mjs'

const run = promisify(execFile)
const bin = fileURLToPath(new URL('../bin/storage-quota.js', import.meta.url))

test('the storage-quota command migrates, reports and rolls back', async () => {
  const db = await createTestDatabase('cli')
  const env = { ...process.env, DATABASE_URL: db.url, STORAGE_ROOT: db.storageRoot, POSTGRES_URL: '' }
  const cli = (...args) => run(process.execPath, [bin, ...args], { env })

  assert.match((await cli('status')).stdout, /^pending {2}1 storage_quota\npending {2}2 quota_lifecycle$/m)
  assert.equal((await cli('migrate')).stdout.trim(), `applied: ${MIGRATION_VERSIONS.join(', ')}`)
  assert.equal((await cli('migrate')).stdout.trim(), 'already up to date')
  assert.match((await cli('status')).stdout, /^applied {2}1 storage_quota {2}\d{4}-/m)
  assert.equal((await cli('sweep')).stdout.trim(), 'swept expired reservations of 0 user(s)')
  assert.equal((await cli('prune')).stdout.trim(), 'pruned 0 settled reservation(s), folded 0 ledger entr(ies)')
  await db.query(`INSERT INTO user_quotas (user_id, limit_bytes, used_bytes) VALUES ('user_cli', 100, 40)`)
  assert.match((await cli('reconcile')).stdout, /^user_cli {2}counter 40 {2}ledger 0 {2}drift 40 .*\nchecked 1 user\(s\), 1 drifted, 0 fixed, 0 deleted project\(s\)$/m)
  assert.match((await cli('reconcile', 'user_cli', '--fix')).stdout, /1 drifted, 1 fixed/)
  assert.match((await cli('reconcile')).stdout, /checked 1 user\(s\), 0 drifted/)
  await db.query(`DELETE FROM user_quotas`)
  const [first, ...later] = MIGRATION_VERSIONS
  assert.equal((await cli('rollback', String(later.length))).stdout.trim(), `reverted: ${later.reverse().join(', ')}`)
  assert.equal((await cli('rollback', '5', '--database-url', db.url)).stdout.trim(), `reverted: ${first}`)
  assert.equal((await cli('rollback')).stdout.trim(), 'nothing to revert')
})

test('failures exit non-zero with the code and no password', async () => {
  const env = { ...process.env, DATABASE_URL: '' , POSTGRES_URL: '' }
  const failure = await run(process.execPath, [bin, 'migrate', '--database-url', 'postgres://u:topsecret@127.0.0.1:1/x'], { env }).catch((e) => e)
  assert.equal(failure.code, 1)
  assert.match(failure.stderr, /DB_UNAVAILABLE/)
  assert.doesNotMatch(failure.stderr, /topsecret/)
  const usage = await run(process.execPath, [bin, 'explode'], { env }).catch((e) => e)
  assert.equal(usage.code, 2)
})

test('the CLI reads .env and .env.local as Next.js does, never over the environment', async () => {
  const db = await createTestDatabase('cli_env')
  const dir = await mkdtemp(join(tmpdir(), 'sq-cli-env-'))
  try {
    const base = { ...process.env, NODE_ENV: 'production' }
    for (const key of ['DATABASE_URL', 'POSTGRES_URL', 'TEST_DATABASE_URL', 'STORAGE_ROOT', 'STORAGE_QUOTA_PROJECTS']) delete base[key]
    const cli = (env, ...args) => run(process.execPath, [bin, ...args], { env, cwd: dir })

    // Nothing anywhere: the message names every way to give a database.
    const none = await cli(base, 'status').catch((e) => e)
    assert.equal(none.code, 1)
    for (const name of ['DATABASE_URL', 'POSTGRES_URL', '--database-url', '.env']) assert.ok(none.stderr.includes(name), none.stderr)

    // .env.local wins over .env; both lose to the environment.
    await writeFile(join(dir, '.env'), `DATABASE_URL=postgres://nobody@127.0.0.1:1/nowhere\nSTORAGE_ROOT=${join(dir, 'storage')}\n`)
    await writeFile(join(dir, '.env.local'), `# the real one\nDATABASE_URL="${db.url}"\n`)
    assert.match((await cli(base, 'status')).stdout, /^pending {2}1 storage_quota$/m)
    const overridden = await cli({ ...base, DATABASE_URL: 'postgres://u:pw@127.0.0.1:1/env' }, 'status').catch((e) => e)
    assert.equal(overridden.code, 1, 'the environment wins over the files')
    assert.match(overridden.stderr, /DB_UNAVAILABLE/)

    // POSTGRES_URL from a file works too (Vercel's name).
    await writeFile(join(dir, '.env.local'), `POSTGRES_URL=${db.url}\n`)
    await writeFile(join(dir, '.env'), '')
    assert.match((await cli(base, 'status')).stdout, /^pending {2}1 storage_quota$/m)

    // --projects names the app's table; a missing one is refused with nothing changed.
    const refused = await cli(base, 'migrate', '--projects', 'invoices:id:owner_id').catch((e) => e)
    assert.equal(refused.code, 1)
    assert.match(refused.stderr, /MIGRATION_FAILED: storage-quota cannot read projects from invoices\(id, owner_id\): there is no table "invoices"/)
    assert.match((await cli(base, 'status')).stdout, /^pending {2}1 storage_quota$/m, 'nothing applied')
    const bad = await cli(base, 'migrate', '--projects', 'x;y').catch((e) => e)
    assert.equal(bad.code, 2)
    assert.match(bad.stderr, /INVALID_ARGUMENT/)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
