#!/usr/bin/env node
'use strict'

// `storage-quota migrate | rollback [steps] | status [--database-url URL]`: migrations for
// deploy pipelines, without app code. The URL defaults to DATABASE_URL, then POSTGRES_URL, read
// from the environment or from the app's .env files (as Next.js reads them).
const { parseArgs } = require('node:util')
const { loadEnvFiles } = require('../lib/env-files.js')

const USAGE = `usage: storage-quota <command> [--database-url URL] [--storage-root DIR] [--projects SOURCE]

  migrate              apply pending migrations
  rollback [N]         revert the N most recent migrations (default 1)
  status               list applied and pending migrations
  reconcile [USER_ID]  compare counters with the ledger (all users, or one); --fix sets them
  sweep                give back the bytes of expired reservations (for a cron job)

The database URL defaults to DATABASE_URL, then POSTGRES_URL; the storage root to STORAGE_ROOT;
the project source to STORAGE_QUOTA_PROJECTS. Each is read from the environment, then from
.env.$NODE_ENV.local, .env.local, .env.$NODE_ENV and .env in the current directory (as Next.js
does; NODE_ENV defaults to development), never over a variable already set.

  --projects SOURCE    where the app's projects are: TABLE[:ID_COLUMN[:OWNER_COLUMN]]
                       (default projects:id:user_id), or standalone`

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'database-url': { type: 'string' },
      'storage-root': { type: 'string' },
      projects: { type: 'string' },
      fix: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  const [command, stepsArg] = positionals
  if (values.help || !command) {
    console.log(USAGE)
    return command || values.help ? 0 : 2
  }
  loadEnvFiles()
  const { createClient } = require('../index.js')
  const { projectsFromText } = require('../lib/client.js')
  const options = {}
  if (values['database-url']) options.databaseUrl = values['database-url']
  if (values['storage-root']) options.storageRoot = values['storage-root']
  if (values.projects) options.projects = projectsFromText(values.projects)
  let client
  try {
    client = createClient({ logger: false, ...options })
  } catch (error) {
    console.error(`storage-quota ${command}: ${error.code ?? 'ERROR'}: ${error.message}`)
    return 2
  }
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
        for (const p of u.projects.filter((p) => p.deleted)) {
          const done = p.removed ? `released ${p.releasedBytes} bytes, removed ${p.path}` : p.releasedBytes ? `released ${p.releasedBytes} bytes` : `--fix releases ${p.ledgerBytes} bytes${p.path ? ` and removes ${p.path}` : ''}`
          console.log(`  project ${p.projectId} was deleted by the app: ${done}`)
        }
      }
      console.log(`checked ${report.checkedUsers} user(s), ${report.driftedUsers} drifted, ${report.fixedUsers} fixed, ${report.deletedProjects} deleted project(s)`)
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
