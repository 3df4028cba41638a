#!/usr/bin/env node
'use strict'

// `storage-quota migrate | rollback [steps] | status [--database-url URL]`: migrations for
// deploy pipelines, without app code. The URL defaults to DATABASE_URL, then POSTGRES_URL.
const { parseArgs } = require('node:util')
const { createClient } = require('../index.js')

const USAGE = `usage: storage-quota <command> [--database-url URL] [--storage-root DIR]

  migrate              apply pending migrations
  rollback [N]         revert the N most recent migrations (default 1)
  status               list applied and pending migrations
  reconcile [USER_ID]  compare counters with the ledger (all users, or one); --fix sets them
  sweep                give back the bytes of expired reservations (for a cron job)
  move USER_ID PROJECT_ID --to s3|local
                       move a project's files to the other backend (resumable: run it again)

The database URL defaults to DATABASE_URL, then POSTGRES_URL; the storage root to STORAGE_ROOT.
The bucket: --bucket, --prefix, --endpoint, --region, or STORAGE_BACKEND=s3 with STORAGE_BUCKET,
STORAGE_PREFIX and AWS_ENDPOINT_URL, AWS_REGION; credentials only from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (never on the command line, where other users could read them).`

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'database-url': { type: 'string' },
      'storage-root': { type: 'string' },
      fix: { type: 'boolean' },
      to: { type: 'string' },
      bucket: { type: 'string' },
      prefix: { type: 'string' },
      endpoint: { type: 'string' },
      region: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  const [command, stepsArg, projectArg] = positionals
  if (values.help || !command) {
    console.log(USAGE)
    return command || values.help ? 0 : 2
  }
  const options = {}
  if (values['database-url']) options.databaseUrl = values['database-url']
  if (values['storage-root']) options.storageRoot = values['storage-root']
  if (values.bucket) {
    options.storage = { backend: 's3', bucket: values.bucket }
    for (const key of ['prefix', 'endpoint', 'region']) if (values[key]) options.storage[key] = values[key]
  }
  const client = createClient({ logger: false, ...options })
  try {
    if (command === 'migrate') {
      const { applied } = await client.migrate()
      console.log(applied.length ? `applied: ${applied.join(', ')}` : 'already up to date')
    } else if (command === 'rollback') {
      const steps = stepsArg === undefined ? 1 : Number(stepsArg)
      const { reverted } = await client.rollback(steps)
      console.log(reverted.length ? `reverted: ${reverted.join(', ')}` : 'nothing to revert')
    } else if (command === 'status') {
      const status = await client.migrationStatus()
      for (const m of status.applied) console.log(`applied  ${m.version} ${m.name}  ${m.appliedAt.toISOString()}`)
      for (const m of status.pending) console.log(`pending  ${m.version} ${m.name}`)
    } else if (command === 'reconcile') {
      const report = await client.reconcile(stepsArg, { fix: Boolean(values.fix) })
      for (const u of report.users) {
        console.log(`${u.userId}  counter ${u.usedBytes}  ledger ${u.ledgerBytes}  drift ${u.driftBytes}  reserved drift ${u.reservedDriftBytes}${u.fixed ? '  fixed' : ''}`)
      }
      console.log(`checked ${report.checkedUsers} user(s), ${report.driftedUsers} drifted, ${report.fixedUsers} fixed`)
    } else if (command === 'move') {
      const moved = await client.moveProjectStorage(stepsArg, projectArg, { to: values.to })
      const how = moved.alreadyMoved ? 'already there; source leftovers deleted' : `${moved.copiedFiles} file(s) copied`
      console.log(`moved ${projectArg} from ${moved.from} to ${moved.path.backend} (${moved.path.path}): ${moved.files} file(s), ${moved.bytes} bytes, ${how}`)
    } else if (command === 'sweep') {
      const { users } = await client.sweepExpiredReservations()
      console.log(`swept expired reservations of ${users} user(s)`)
    } else {
      console.error(USAGE)
      return 2
    }
    return 0
  } catch (error) {
    console.error(`storage-quota ${command}: ${error.code ?? 'ERROR'}: ${error.message}`)
    return 1
  } finally {
    await client.close()
  }
}

main().then((code) => {
  process.exitCode = code
})
