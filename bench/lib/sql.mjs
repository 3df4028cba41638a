// The SQL the contenders run, read from src/quota.rs so the baselines always send exactly the
// statements the addon sends (a change in quota.rs changes the baselines with it).
import { readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'

const QUOTA_RS = new URL('../../src/quota.rs', import.meta.url)

function rustConst(source, name) {
  const match = source.match(new RegExp(`const ${name}: &str =\\s*"([\\s\\S]*?)";`))
  if (!match) throw new Error(`bench: const ${name} not found in src/quota.rs`)
  // Rust string continuation (`\` + newline + indentation) joins lines.
  return match[1].replace(/\\\n\s*/g, '')
}

const source = readFileSync(QUOTA_RS, 'utf8')
export const SELECT_USAGE = rustConst(source, 'SELECT_USAGE')
export const ENSURE_QUOTA_ROW_SQL = rustConst(source, 'ENSURE_QUOTA_ROW_SQL')
export const RECORD_UPLOAD = rustConst(source, 'RECORD_UPLOAD')

/** Seeded users are `1000001`, `1000002`, …: valid user ids of constant length, usable by pgbench. */
export const USER_BASE = 1_000_000
export const userId = (n) => String(USER_BASE + n)

/** Each seeded user owns one project whose id is md5(user id) read as a uuid (as PostgreSQL's
 *  `md5(x)::uuid` does), so pgbench can name it without a lookup. */
export function projectId(user) {
  const h = createHash('md5').update(user).digest('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}
