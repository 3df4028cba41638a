import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
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
  assert.match((await cli('reconcile')).stdout, /^user_cli {2}counter 40 {2}ledger 0 {2}drift 40 .*\nchecked 1 user\(s\), 1 drifted, 0 fixed$/m)
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
