// The database's ceiling: pgbench running the same statements over the same number of
// connections, with prepared statements (-M prepared), no Node and no driver in between.
import { spawn } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { COMMIT, RECORD_UPLOAD, RESERVE, SELECT_USAGE, USER_BASE } from './sql.mjs'
import { percentile } from './stats.mjs'

/**
 * pgbench scripts for each operation: the statement text from src/quota/usage.rs with its `$n`
 * parameters as pgbench variables. The project id is `md5(user)::uuid`, how the seed names
 * each user's project (pgbench has no string variables), and the upload id a random number.
 */
function script(op, { users, hot }) {
  const pick = hot ? `\\set u ${USER_BASE + 1}` : `\\set u random(${USER_BASE + 1}, ${USER_BASE + users})`
  const oneLine = (sql) => sql.trim().replace(/\s+/g, ' ')
  if (op === 'checkQuota') return `${pick}\n${oneLine(SELECT_USAGE).replace('$1', ':u')};\n`
  if (op === 'recordUpload') {
    const sql = oneLine(RECORD_UPLOAD)
      .replaceAll('$1', ':u')
      .replaceAll('$2', 'md5(:u)::uuid::text')
      .replaceAll('$3', ':k')
      .replaceAll('$4', ':b')
    // One statement, as the addon sends it (its sweep goes out only for a user with expired
    // reservations, which the bench's users never have).
    return `${pick}\n\\set k random(1, 1000000000000000)\n\\set b 1\n${sql};\n`
  }
  if (op === 'reserveCommit') {
    // reserveUpload, then commitUpload.
    const reserve = oneLine(RESERVE)
      .replaceAll('$1', ':u')
      .replaceAll('$2', 'md5(:u)::uuid::text')
      .replaceAll('$3', '1')
      .replaceAll('$4', ':rid::uuid')
      .replaceAll('$5', '3600000')
    const commit = oneLine(COMMIT)
      .replaceAll('$2', 'NULL::bigint')
      .replaceAll('$3', ':u')
      .replaceAll('$4', "('reservation ' || :rid)")
      .replaceAll('$5', "'upload'")
      .replaceAll('$1', ':rid::uuid')
    return `${pick}\nSELECT gen_random_uuid()::text AS rid \\gset\n${reserve};\n${commit};\n`
  }
  throw new Error(`pgbench: no script for ${op}`)
}

function run(command, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    child.on('error', reject)
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${command} exited ${code}:\n${out}`))))
  })
}

/**
 * One measurement. pgbench runs for warmup + duration; only transactions that finished after
 * the warmup count, from its per-transaction log (`-l`), which also gives the percentiles.
 */
export async function pgbench({ url, op, concurrency, poolSize, warmupMs, durationMs, users, hot }) {
  const dir = await mkdtemp(join(tmpdir(), 'sq-pgbench-'))
  try {
    const file = join(dir, `${op}.sql`)
    await writeFile(file, script(op, { users, hot }))
    const u = new URL(url)
    const clients = Math.min(concurrency, poolSize)
    const seconds = Math.max(1, Math.ceil((warmupMs + durationMs) / 1000))
    await run('pgbench', [
      '-n', '-M', 'prepared', '-f', file, '-c', String(clients), '-j', '1', '-T', String(seconds),
      '-l', `--log-prefix=${join(dir, 'log')}`,
      '-h', u.hostname, '-p', u.port || '5432', '-U', decodeURIComponent(u.username) || 'postgres',
      u.pathname.slice(1),
    ])
    const ends = []
    const latencies = []
    for (const name of (await readdir(dir)).filter((n) => n.startsWith('log'))) {
      for (const line of (await readFile(join(dir, name), 'utf8')).split('\n')) {
        const f = line.split(' ')
        if (f.length < 6) continue
        ends.push(Number(f[4]) * 1e3 + Number(f[5]) / 1e3)
        latencies.push(Number(f[2]) / 1e3)
      }
    }
    const first = ends.reduce((a, b) => Math.min(a, b), Infinity)
    const last = ends.reduce((a, b) => Math.max(a, b), -Infinity)
    const from = first + Math.min(warmupMs, (last - first) / 2)
    const kept = latencies.filter((_, i) => ends[i] > from).sort((a, b) => a - b)
    return {
      ops: kept.length,
      completed: ends.length,
      opsPerSec: (kept.length / (last - from)) * 1000,
      p50: percentile(kept, 50),
      p99: percentile(kept, 99),
      errors: 0,
      clients,
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}
