// The database's side of a measurement: CPU time of every PostgreSQL server process and WAL
// written, read before and after one contender's run. Divided by the operations that run
// completed, these say how much of the shared database one operation costs, which decides how
// many app instances one PostgreSQL can serve. The server must run on this machine (loopback):
// its processes are read from /proc. Other activity on the server in the window counts too,
// so bench runs use a quiet server.
import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { query } from './db.mjs'

const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100

/** user + system CPU (ms) of all processes named `postgres`, or NaN where /proc cannot tell. */
function postgresCpuMs() {
  let ticks = 0
  let seen = 0
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    let stat
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    } catch {
      continue // exited meanwhile
    }
    // pid (comm) state … : comm may hold spaces, so split after the last ')'.
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
    if (comm !== 'postgres') continue
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // fields[11..14] = utime, stime, cutime, cstime (proc(5) fields 14-17, counted from state).
    // The children's times matter: a backend that exits (pgbench disconnecting) hands its CPU to
    // the postmaster's cutime/cstime when reaped, so the sum over all processes is conserved.
    ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])
    seen++
  }
  return seen ? (ticks / TICKS_PER_SECOND) * 1000 : NaN
}

/** A reading to pass to `dbWorkSince`. */
export async function dbWorkMark(db) {
  const { rows } = await query(db, 'SELECT pg_current_wal_lsn()::text AS lsn')
  return { cpuMs: postgresCpuMs(), lsn: rows[0].lsn }
}

/**
 * Database CPU per 1,000 operations (ms) and WAL bytes per operation since `mark`, for a run
 * that completed `ops` operations.
 */
export async function dbWorkSince(db, mark, ops) {
  const cpuMs = postgresCpuMs() - mark.cpuMs
  const { rows } = await query(db, 'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8 AS wal', [mark.lsn])
  return {
    dbCpuMsPer1k: ops > 0 ? (cpuMs / ops) * 1000 : NaN,
    walBytesPerOp: ops > 0 ? rows[0].wal / ops : NaN,
  }
}
