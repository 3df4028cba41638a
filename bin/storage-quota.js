#!/usr/bin/env node
'use strict'

// `storage-quota migrate | backfill | rollback [steps] | status …`: migrations for deploy
// pipelines, without app code. The URL defaults to DATABASE_URL, then POSTGRES_URL, read from
// the environment or from the app's .env files (as Next.js reads them).
const { parseArgs } = require('node:util')
const { loadEnvFiles } = require('../lib/env-files.js')
const { backup } = require('./backup.js')
const { Progress, PreparationProgress } = require('./progress.js')

const USAGE = `usage: storage-quota <command> [--database-url URL] [--storage-root DIR] [--projects SOURCE]

  migrate              apply pending schema migrations, then backfill existing projects
                       (--no-backfill: schema only; --backup FILE: pg_dump the tables it changes first).
                       Upgrading from 0.1.0 with more than 10,000 rows in storage-quota's own tables,
                       it first prepares them online, in committed batches (resumable)
  backfill             backfill existing projects (resumes where it stopped; --batch-size N)
  rollback [N]         revert the N most recent migrations (default 1)
                       (--backup FILE first; --discard-usage lets 0001's rollback drop recorded usage)
  status               list applied and pending migrations, and where the backfill is
  reconcile [USER_ID]  compare counters with the ledger (all users, or one); --fix sets them
  sweep                give back the bytes of expired reservations (for a cron job)
  prune                delete settled reservations and fold ledger entries older than the
                       retention period (STORAGE_QUOTA_RETENTION_DAYS, default 90)
  move USER_ID PROJECT_ID --to s3|local
                       move a project's files to the other backend (resumable: run it again)

The database URL defaults to DATABASE_URL, then POSTGRES_URL; the storage root to STORAGE_ROOT.
The bucket: --bucket, --prefix, --endpoint, --region, or STORAGE_BACKEND=s3 with STORAGE_BUCKET,
STORAGE_PREFIX and AWS_ENDPOINT_URL, AWS_REGION; credentials only from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (never on the command line, where other users could read them).
The project source: --projects, or STORAGE_QUOTA_PROJECTS. Each setting is read from the
environment, then from .env.$NODE_ENV.local, .env.local, .env.$NODE_ENV and .env in the current
directory (as Next.js does; NODE_ENV defaults to development), never over a variable already set.

  --projects SOURCE    where the app's projects are: TABLE[:ID_COLUMN[:OWNER_COLUMN]]
                       (default projects:id:user_id), or standalone`

function databaseUrl(values) {
  return values['database-url'] || process.env.DATABASE_URL || process.env.POSTGRES_URL
}

function printSummary(out, p, ms) {
  const n = (x) => Number(x).toLocaleString('en-US')
  out(
    `backfill ${p.done ? 'done' : `stopped (phase ${p.phase}; run \`storage-quota backfill\` to resume)`}: ` +
      `${n(p.scanned)} projects scanned, ${n(p.baselines)} baselines, ` +
      `${n(p.usersSeeded)} users seeded, ${n(p.skippedProjects)} projects skipped` +
      (ms === undefined ? '' : ` in ${(ms / 1000).toFixed(1)} s`),
  )
}

function printWarnings(err, p) {
  if (p.skippedProjects > 0) {
    const listed = p.skippedOwners.map((o) => `${JSON.stringify(o.owner)} (${o.projects})`).join(', ')
    const more = p.skippedOwnerCount > p.skippedOwners.length ? `, and ${p.skippedOwnerCount - p.skippedOwners.length} more` : ''
    err(
      `warning: ${p.skippedProjects} project(s) of ${p.skippedOwnerCount} owner(s) whose ids cannot be used for paths ` +
        `got no storage path and no quota (README, "Ids"): ${listed}${more}`,
    )
  }
}

/** Ctrl-C (or SIGTERM) stops between steps; a second one quits at once. Returns the signal and its release. */
function interruptible(err) {
  const controller = new AbortController()
  const stop = () => {
    if (controller.signal.aborted) process.exit(130)
    err('\nstopping after the step in flight (Ctrl-C again to quit at once; nothing is lost either way)')
    controller.abort()
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
  return {
    signal: controller.signal,
    release() {
      process.off('SIGINT', stop)
      process.off('SIGTERM', stop)
    },
  }
}

/**
 * The online preparation of big tables for pending migrations (docs/migrations.md, "Big
 * tables"), to its end or Ctrl-C, drawing progress. Resolves to the exit code (0: go on).
 */
async function runPreparation(client, batchSize, out, err) {
  let state = await client.migrationPreparation()
  if (state.done) return 0
  const started = performance.now()
  out(`preparing ${state.tables.join(', ')} for the pending migrations online (more than the in-place limit of rows): the app keeps running; ${state.tasksTotal - state.tasksDone} step(s)`)
  const bar = new PreparationProgress(process.stderr, 'prepare')
  const { signal, release } = interruptible(err)
  let retries = 0
  try {
    state = await client.prepareMigrations({
      batchSize,
      signal,
      onProgress(p) {
        if (p.lockRetries) {
          retries += p.lockRetries
          bar.log('a step waited for a lock held by the app, gave up at once and is tried again')
        }
        bar.update(p)
      },
    })
  } finally {
    bar.end()
    release()
  }
  const took = `${((performance.now() - started) / 1000).toFixed(1)} s`
  if (!state.done) {
    out(`preparation stopped after ${took} (${state.tasksDone} of ${state.tasksTotal} steps done): run \`storage-quota migrate\` to resume; nothing was migrated`)
    return 130
  }
  out(`preparation done in ${took}${retries ? ` (${retries} lock wait(s) retried)` : ''}`)
  return 0
}

/** Runs the backfill to its end (or Ctrl-C), drawing progress. Resolves to the exit code. */
async function runBackfill(client, batchSize, out, err) {
  const controller = new AbortController()
  const stop = () => {
    if (controller.signal.aborted) process.exit(130)
    err('\nstopping after the batch in flight (Ctrl-C again to quit at once; nothing is lost either way)')
    controller.abort()
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
  const started = performance.now()
  let progress = await client.backfillStatus()
  if (progress.done) {
    out('backfill: nothing to do (already done)')
    return 0
  }
  const bar = new Progress(process.stderr)
  const notes = new Set()
  let retries = 0
  try {
    progress = await client.backfill({
      batchSize,
      signal: controller.signal,
      onProgress(p) {
        if (p.storageRoot && !notes.has('root')) {
          notes.add('root')
          bar.log(`project paths go under ${p.storageRoot} (each recorded on its first use)`)
        }
        for (const note of p.notes) bar.log(`note: ${note}`)
        if (p.lockRetries) {
          retries += p.lockRetries
          bar.log(`a batch waited for a lock held by the app and was retried ${p.lockRetries} time(s)`)
        }
        bar.update(p)
      },
    })
  } finally {
    bar.end()
    process.off('SIGINT', stop)
    process.off('SIGTERM', stop)
  }
  printWarnings(err, progress)
  printSummary(out, progress, performance.now() - started)
  if (retries) out(`lock waits retried: ${retries}`)
  return progress.done ? 0 : 130
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'database-url': { type: 'string' },
      'storage-root': { type: 'string' },
      projects: { type: 'string' },
      backup: { type: 'string' },
      'batch-size': { type: 'string' },
      'no-backfill': { type: 'boolean' },
      'discard-usage': { type: 'boolean' },
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
  loadEnvFiles()
  const { createClient } = require('../index.js')
  const { projectsFromText } = require('../lib/client.js')
  const out = (line) => console.log(line)
  const err = (line) => console.error(line)
  const batchSize = values['batch-size'] === undefined ? 10_000 : Number(values['batch-size'])
  const options = {}
  if (values['database-url']) options.databaseUrl = values['database-url']
  if (values['storage-root']) options.storageRoot = values['storage-root']
  if (values.projects) options.projects = projectsFromText(values.projects)
  if (values.bucket) {
    options.storage = { backend: 's3', bucket: values.bucket }
    for (const key of ['prefix', 'endpoint', 'region']) if (values[key]) options.storage[key] = values[key]
  }
  let client
  try {
    client = createClient({ logger: false, ...options })
  } catch (error) {
    console.error(`storage-quota ${command}: ${error.code ?? 'ERROR'}: ${error.message}`)
    return 2
  }
  try {
    if (values.backup !== undefined) {
      if (!['migrate', 'rollback'].includes(command)) throw Object.assign(new Error('--backup goes with migrate or rollback'), { code: 'INVALID_ARGUMENT' })
      const url = databaseUrl(values)
      if (!url) throw Object.assign(new Error('no database URL: set DATABASE_URL or POSTGRES_URL, or pass --database-url'), { code: 'DB_UNAVAILABLE' })
      const tables = await backup(url, values.backup)
      out(
        tables.length
          ? `backup: the app's projects table and storage-quota's tables written to ${values.backup} (pg_restore --list ${values.backup})`
          : 'backup: no app or storage-quota tables yet; nothing to back up',
      )
    }
    if (command === 'migrate') {
      const prepared = await runPreparation(client, batchSize, out, err)
      if (prepared !== 0) return prepared
      const result = await client.migrate()
      out(result.applied.length ? `applied: ${result.applied.join(', ')}` : 'already up to date')
      if (result.lockRetries) out(`lock waits given up on and retried: ${result.lockRetries}`)
      if (result.backfill.done) {
        if (result.backfill.scanned > 0) out(`project paths go under ${result.backfill.storageRoot} (each recorded on its first use)`)
        if (result.applied.length) printWarnings(err, result.backfill)
        if (result.backfill.scanned > 0) printSummary(out, result.backfill)
        return 0
      }
      if (values['no-backfill']) {
        out('the backfill of existing projects is pending: run `storage-quota backfill`')
        return 0
      }
      return await runBackfill(client, batchSize, out, err)
    } else if (command === 'backfill') {
      return await runBackfill(client, batchSize, out, err)
    } else if (command === 'rollback') {
      const steps = stepsArg === undefined ? 1 : Number(stepsArg)
      const { reverted } = await client.rollback(steps, { discardUsage: Boolean(values['discard-usage']) })
      out(reverted.length ? `reverted: ${reverted.join(', ')}` : 'nothing to revert')
    } else if (command === 'status') {
      const status = await client.migrationStatus()
      for (const m of status.applied) out(`applied  ${m.version} ${m.name}  ${m.appliedAt.toISOString()}`)
      for (const m of status.pending) out(`pending  ${m.version} ${m.name}`)
      const prep = await client.migrationPreparation()
      if (prep.tasksTotal > 0) {
        out(`online preparation of ${prep.tables.join(', ')}: ${prep.tasksDone} of ${prep.tasksTotal} steps done${prep.done ? '' : ' (run `storage-quota migrate`)'}`)
      }
      if (status.applied.some((m) => m.version === 5)) {
        const p = await client.backfillStatus()
        out(`backfill ${p.phase}${p.done ? '' : ' (run `storage-quota backfill`)'}: ${p.scanned} of ${p.totalProjects ?? '?'} projects scanned`)
      }
    } else if (command === 'reconcile') {
      const report = await client.reconcile(stepsArg, { fix: Boolean(values.fix) })
      for (const u of report.users) {
        out(`${u.userId}  counter ${u.usedBytes}  ledger ${u.ledgerBytes}  drift ${u.driftBytes}  reserved drift ${u.reservedDriftBytes}${u.fixed ? '  fixed' : ''}`)
        for (const p of u.projects.filter((p) => p.deleted)) {
          const done = p.removed ? `released ${p.releasedBytes} bytes, removed ${p.path}` : p.releasedBytes ? `released ${p.releasedBytes} bytes` : `--fix releases ${p.ledgerBytes} bytes${p.path ? ` and removes ${p.path}` : ''}`
          out(`  project ${p.projectId} was deleted by the app: ${done}`)
        }
      }
      out(`checked ${report.checkedUsers} user(s), ${report.driftedUsers} drifted, ${report.fixedUsers} fixed, ${report.deletedProjects} deleted project(s)`)
    } else if (command === 'move') {
      const moved = await client.moveProjectStorage(stepsArg, projectArg, { to: values.to })
      const how = moved.alreadyMoved ? 'already there; source leftovers deleted' : `${moved.copiedFiles} file(s) copied`
      out(`moved ${projectArg} from ${moved.from} to ${moved.path.backend} (${moved.path.path}): ${moved.files} file(s), ${moved.bytes} bytes, ${how}`)
    } else if (command === 'sweep') {
      const { users } = await client.sweepExpiredReservations()
      out(`swept expired reservations of ${users} user(s)`)
    } else if (command === 'prune') {
      const { reservations, ledgerEntries } = await client.pruneHistory()
      out(`pruned ${reservations} settled reservation(s), folded ${ledgerEntries} ledger entr(ies)`)
    } else {
      err(USAGE)
      return 2
    }
    return 0
  } catch (error) {
    err(`storage-quota ${command}: ${error.code ?? 'ERROR'}: ${error.message}`)
    return 1
  } finally {
    await client.close()
  }
}

main().then((code) => {
  process.exitCode = code
})
