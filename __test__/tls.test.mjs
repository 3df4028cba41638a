import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createClient } from '../index.js'
import { createTestDatabase, rejection } from './helpers/db.mjs'

const db = await createTestDatabase('tls')
// TLS between the addon and PostgreSQL itself: never through the test pooler.
const setup = createClient({ databaseUrl: db.directUrl, storageRoot: db.storageRoot, logger: false })
await setup.migrate()
after(() => setup.close())

const serverHasTls = (await db.query('SHOW ssl')).rows[0].ssl === 'on'
const withParams = (params) => `${db.directUrl}${db.directUrl.includes('?') ? '&' : '?'}${params}`

async function sessionUsesTls(applicationName) {
  const { rows } = await db.query(
    `SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid WHERE a.application_name = $1`,
    [applicationName],
  )
  assert.ok(rows.length > 0, 'the client has a session open')
  return rows.every((r) => r.ssl)
}

test('without sslmode the connection is plain TCP, like node-postgres', async () => {
  const client = createClient({ databaseUrl: db.directUrl, applicationName: 'sq-tls-plain', logger: false })
  try {
    await client.checkQuota('user_a', 1)
    assert.equal(await sessionUsesTls('sq-tls-plain'), false)
  } finally {
    await client.close()
  }
})

test('sslmode=require encrypts the session', { skip: !serverHasTls && 'the server has ssl = off' }, async () => {
  const client = createClient({ databaseUrl: withParams('sslmode=require'), applicationName: 'sq-tls-require', logger: false })
  try {
    assert.equal((await client.checkQuota('user_a', 1)).allowed, true)
    assert.equal(await sessionUsesTls('sq-tls-require'), true)
  } finally {
    await client.close()
  }
})

test('sslmode=verify-full refuses a certificate no trusted root signed', { skip: !serverHasTls && 'the server has ssl = off' }, async () => {
  const client = createClient({ databaseUrl: withParams('sslmode=verify-full'), connectTimeoutMs: 3000, logger: false })
  try {
    const error = await rejection(client.checkQuota('user_a', 1))
    assert.equal(error.code, 'DB_UNAVAILABLE')
    assert.match(error.message, /certificate/i)
  } finally {
    await client.close()
  }
})

test('an unknown sslmode or unreadable sslrootcert is DB_UNAVAILABLE with a clear message', async () => {
  const bad = createClient({ databaseUrl: withParams('sslmode=sometimes'), logger: false })
  assert.match((await rejection(bad.checkQuota('user_a', 1))).message, /sslmode must be/)
  const missing = createClient({ databaseUrl: withParams('sslmode=verify-full&sslrootcert=/nonexistent/ca.pem'), logger: false })
  const error = await rejection(missing.checkQuota('user_a', 1))
  assert.equal(error.code, 'DB_UNAVAILABLE')
  assert.match(error.message, /cannot read sslrootcert \/nonexistent\/ca\.pem/)
})
