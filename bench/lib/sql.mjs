// The SQL the contenders run, read from src/quota/usage.rs so the baselines always send exactly the
// statements the addon sends (a change in quota.rs changes the baselines with it).
import { readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'

const QUOTA_RS = new URL('../../src/quota/usage.rs', import.meta.url)

// Rust string continuation (`\` + newline + indentation) joins lines.
const unescape = (literal) => literal.replace(/\\\n\s*/g, '')

/**
 * A `const NAME: &str = "…";`, or one built by a `macro_rules!` that splices its literal
 * arguments into a `concat!` of literals (`const NAME: &str = some_sql!("…", "…");`), each
 * `$name` of the macro's pattern replaced by the argument in its position.
 */
export function rustConst(source, name, { optional = false } = {}) {
  const plain = source.match(new RegExp(`const ${name}: &str =\\s*"([\\s\\S]*?)";`))
  if (plain) return unescape(plain[1])
  const literal = /"((?:[^"\\]|\\[\s\S])*)"/g
  const call = source.match(new RegExp(`const ${name}: &str =\\s*(\\w+)!\\(((?:\\s*"(?:[^"\\\\]|\\\\[\\s\\S])*"\\s*,?)+)\\s*\\);`))
  if (call) {
    const args = [...call[2].matchAll(literal)].map((m) => unescape(m[1]))
    const macro = source.match(new RegExp(`macro_rules! ${call[1]} \\{\\s*\\(([^)]*)\\)\\s*=>[\\s\\S]*?concat!\\(([\\s\\S]*?)\\)\\s*\\};`))
    if (macro) {
      const names = [...macro[1].matchAll(/\$(\w+)/g)].map((m) => m[1])
      const parts = [...macro[2].matchAll(/"((?:[^"\\]|\\[\s\S])*)"|\$(\w+)/g)]
      return parts.map((m) => (m[2] ? args[names.indexOf(m[2])] : unescape(m[1]))).join('')
    }
  }
  if (optional) return null
  throw new Error(`bench: const ${name} not found in the Rust source`)
}

const source = readFileSync(QUOTA_RS, 'utf8')
export const SELECT_USAGE = rustConst(source, 'SELECT_USAGE')
export const ENSURE_QUOTA_ROW_SQL = rustConst(source, 'ENSURE_QUOTA_ROW_SQL')
export const RECORD_UPLOAD = rustConst(source, 'RECORD_UPLOAD')
/** Sent only when a charge answers `expired_pending` (the user has expired reservations). */
export const SWEEP_USER_SQL = rustConst(source, 'SWEEP_USER_SQL', { optional: true })

// Reservations: the statements of src/quota/reservations.rs and settle.rs, for reserveUpload + commitUpload.
const RESERVATIONS_RS = readFileSync(new URL('../../src/quota/reservations.rs', import.meta.url), 'utf8')
export const RESERVE = rustConst(RESERVATIONS_RS, 'RESERVE')
export const COMMIT = rustConst(readFileSync(new URL('../../src/quota/settle.rs', import.meta.url), 'utf8'), 'COMMIT')

/** Seeded users are `1000001`, `1000002`, …: valid user ids of constant length, usable by pgbench. */
export const USER_BASE = 1_000_000
export const userId = (n) => String(USER_BASE + n)

/** Each seeded user owns one project whose id is md5(user id) read as a uuid (as PostgreSQL's
 *  `md5(x)::uuid` does), so pgbench can name it without a lookup. */
export function projectId(user) {
  const h = createHash('md5').update(user).digest('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}
