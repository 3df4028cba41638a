'use strict'

// `--backup FILE`: pg_dump (PostgreSQL's client tools) of the tables a migration or rollback
// changes — the app's `projects` (migrations add a column and fill it) and storage-quota's own
// tables that exist — in pg_dump's custom format, before anything is changed.
const { spawn } = require('node:child_process')

/** Tables named here that do not exist are ignored by pg_dump (no --strict-names). */
const TABLES = [
  'projects',
  'user_quotas',
  'project_storage_paths',
  'quota_ledger',
  'quota_reservations',
  'quota_limit_changes',
  'quota_project_copies',
  'quota_copy_leases',
  'simulation_jobs',
  'storage_quota_meta',
  'storage_quota_migrations',
  'storage_quota_backfill',
  'storage_quota_backfill_skipped',
]

function fail(message) {
  return Object.assign(new Error(`${message}; nothing was changed`), { code: 'BACKUP_FAILED' })
}

/**
 * Dumps the tables to `file`. Resolves to the tables asked for, or [] when none exists yet.
 * The password goes to pg_dump through PGPASSWORD, never on its command line.
 */
function backup(databaseUrl, file) {
  let url
  try {
    url = new URL(databaseUrl)
  } catch {
    return Promise.reject(fail('the database URL is not a URL'))
  }
  const env = { ...process.env }
  if (url.password) env.PGPASSWORD = decodeURIComponent(url.password)
  url.password = ''
  // Prisma's pooler flag (see docs/scaling.md) is ours, not libpq's: pg_dump refuses it.
  url.searchParams.delete('pgbouncer')
  const args = ['--format=custom', `--file=${file}`, ...TABLES.map((t) => `--table=public.${t}`), `--dbname=${url}`]
  return new Promise((resolve, reject) => {
    const child = spawn(process.env.STORAGE_QUOTA_PG_DUMP || 'pg_dump', args, { env, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk) => (stderr += chunk))
    child.on('error', (error) => {
      reject(
        error.code === 'ENOENT'
          ? fail('pg_dump was not found on PATH: install the PostgreSQL client tools (Debian/Ubuntu: apt-get install postgresql-client; macOS: brew install libpq) or run without --backup')
          : fail(`pg_dump could not be started: ${error.message}`),
      )
    })
    child.on('close', (code) => {
      if (code === 0) return resolve(TABLES)
      if (/no matching tables were found/.test(stderr)) return resolve([])
      reject(fail(`pg_dump failed (exit ${code}): ${stderr.trim().replaceAll(databaseUrl, '<database url>')}`))
    })
  })
}

module.exports = { backup }
