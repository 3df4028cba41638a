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
  prune                delete settled reservations and fold ledger entries older than the
                       retention period (STORAGE_QUOTA_RETENTION_DAYS, default 90)

The database URL defaults to DATABASE_URL, then POSTGRES_URL; the storage root to STORAGE_ROOT.`

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'database-url': { type: 'string' },
      'storage-root': { type: 'string' },
      fix: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  const [command, stepsArg] = positionals
  if (values.help || !command) {
    console.log(USAGE)
    return command || values.help ? 0 : 2
  }
  const options = {}
  if (values['database-url']) options.databaseUrl = values['database-url']
  if (values['storage-root']) options.storageRoot = values['storage-root']
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
    } else if (command === 'sweep') {
      const { users } = await client.sweepExpiredReservations()
      console.log(`swept expired reservations of ${users} user(s)`)
    } else if (command === 'prune') {
      const { reservations, ledgerEntries } = await client.pruneHistory()
      console.log(`pruned ${reservations} settled reservation(s), folded ${ledgerEntries} ledger entr(ies)`)
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
