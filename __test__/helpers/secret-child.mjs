// Child process of reliability-security.test.mjs: makes storage-quota fail to connect in every
// way it can and lose its connection mid-call, printing every error in full (message, fields,
// util.inspect) so the parent can check that no password shows up on stdout or stderr.
import { inspect } from 'node:util'
import { createInterface } from 'node:readline'
import { createClient } from '../../index.js'

const { GOOD_URL, WRONG_PASSWORD_URL, PROJECT_ID } = process.env
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()

function show(label, error) {
  console.log(`${label}: ${error.code} ${error.message}`)
  console.log(JSON.stringify(error))
  console.log(inspect(error, { depth: 5 }))
  console.error(String(error.stack))
}

async function attempt(label, url, options = {}) {
  const client = createClient({ databaseUrl: url, connectTimeoutMs: 2000, ...options })
  try {
    await client.checkQuota('user_secret', 1)
    console.log(`${label}: unexpectedly connected`)
  } catch (error) {
    show(label, error)
  } finally {
    await client.close()
  }
}

const good = new URL(GOOD_URL)
const withPort = (port) => Object.assign(new URL(GOOD_URL), { port: String(port) }).toString()
const withDatabase = (name) => Object.assign(new URL(GOOD_URL), { pathname: `/${name}` }).toString()
await attempt('refused', withPort(1))
await attempt('no such database', withDatabase('sq_no_such_database'))
await attempt('no such role', GOOD_URL.replace(`//${good.username}:`, '//sq_no_such_role:'))
await attempt('wrong password', WRONG_PASSWORD_URL)
await attempt('malformed', `${GOOD_URL}?sslmode=bogus&connect_timeout=x`)
await attempt('not a url', GOOD_URL.replace('postgres://', 'postgres:/'))

// A connection lost in the middle of a call: the parent holds the row lock, then terminates
// this client's backend while the call waits.
const client = createClient({ databaseUrl: GOOD_URL, applicationName: 'sq-secret-child', poolSize: 1 })
await client.checkQuota('user_secret', 1)
console.log('READY')
await lines.next()
const blocked = client.recordUpload('user_secret', PROJECT_ID, 1, { uploadId: 'secret-1' })
console.log('BLOCKED')
try {
  await blocked
  console.log('lost: unexpectedly resolved')
} catch (error) {
  show('lost', error)
}
// The retry a careful app makes (same uploadId, short pause): the pool replaces the connection.
let again
for (let i = 0; ; i++) {
  try {
    again = await client.recordUpload('user_secret', PROJECT_ID, 1, { uploadId: 'secret-1' })
    break
  } catch (error) {
    show(`retry ${i}`, error)
    if (i === 3) throw error
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}
console.log(`after loss: recorded, duplicate=${again.duplicate}`)
await client.close()
process.exit(0)
