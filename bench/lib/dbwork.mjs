// The database's side of a measurement: CPU time of every PostgreSQL server process and WAL
// written, read before and after one contender's run. Divided by the operations that run
// completed, these say how much of the shared database one operation costs, which decides how
// many app instances one PostgreSQL can serve. The server must run on this machine (loopback):
// its processes are read from /proc: the server's postmaster (the checkpointer's parent) and
// its children, so other PostgreSQL servers on the machine do not count. Other
// activity on the same server in the window counts too, so bench runs use a quiet server.
import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { query } from './db.mjs'

const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100

/** /proc/PID/stat's fields after `(comm)`, from the state on, and comm itself; null if gone. */
function stat(pid) {
  let text
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return null // exited meanwhile
  }
  // pid (comm) state … : comm may hold spaces, so split after the last ')'.
  return { comm: text.slice(text.indexOf('(') + 1, text.lastIndexOf(')')), fields: text.slice(text.lastIndexOf(')') + 2).split(' ') }
}

/**
 * user + system CPU (ms) of the server's processes named `postgres` (`postmaster` and the
 * processes whose parent it is; every process named so when it is not known), or NaN where
 * /proc cannot tell.
 */
function postgresCpuMs(postmaster) {
  let ticks = 0
  let seen = 0
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    const read = stat(pid)
    if (!read || read.comm !== 'postgres') continue
    const { fields } = read
    // fields[1] = ppid (proc(5) field 4).
    if (postmaster && pid !== String(postmaster) && fields[1] !== String(postmaster)) continue
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
  const { rows } = await query(
    db,
    `SELECT pg_current_wal_lsn()::text AS lsn, (SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer') AS server`,
  )
  // The checkpointer lives as long as the server; its parent is the postmaster.
  const postmaster = rows[0].server ? (stat(rows[0].server)?.fields[1] ?? null) : null
  return { cpuMs: postgresCpuMs(postmaster), lsn: rows[0].lsn, postmaster, statements: await statementsRun(db) }
}

/**
 * Statements run in the database so far (BEGIN and COMMIT included), from pg_stat_statements
 * when the server loads it (`shared_preload_libraries`); null otherwise.
 */
async function statementsRun(db) {
  try {
    await query(db, 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements')
    const { rows } = await query(
      db,
      `SELECT coalesce(sum(calls), 0)::float8 AS n FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    )
    return rows[0].n
  } catch {
    return null
  }
}

/**
 * Database CPU per 1,000 operations (ms), WAL bytes and statements per operation since `mark`,
 * for a run that completed `ops` operations.
 */
export async function dbWorkSince(db, mark, ops) {
  const cpuMs = postgresCpuMs(mark.postmaster) - mark.cpuMs
  const { rows } = await query(db, 'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8 AS wal', [mark.lsn])
  const statements = mark.statements === null ? null : await statementsRun(db)
  return {
    // Less the three statements of statementsRun itself.
    statementsPerOp: statements === null || ops === 0 ? NaN : (statements - mark.statements - 3) / ops,
    dbCpuMsPer1k: ops > 0 ? (cpuMs / ops) * 1000 : NaN,
    walBytesPerOp: ops > 0 ? rows[0].wal / ops : NaN,
  }
}
