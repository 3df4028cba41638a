'use strict'

// Structured log events: refusals, shadow-mode would-be refusals, drift found, slow calls,
// limit changes. They go to the `logger` the app passes (a function taking `(event, fields)`,
// or an object with `info`/`warn`), or as JSON lines to stderr. `logger: false` or
// STORAGE_QUOTA_LOG=off silences them. Fields never include connection strings.

const WARN = new Set(['drift_found', 'slow_call', 'shadow_refusal', 'backfill_pending'])

function createLogger(logger) {
  if (logger === false || process.env.STORAGE_QUOTA_LOG === 'off') return () => {}
  if (typeof logger === 'function') return (event, fields) => logger(event, fields)
  if (logger && typeof logger === 'object') {
    return (event, fields) => {
      const level = WARN.has(event) ? 'warn' : 'info'
      const write = typeof logger[level] === 'function' ? logger[level] : logger.info
      if (typeof write === 'function') write.call(logger, { source: 'storage-quota', event, ...fields })
    }
  }
  return (event, fields) => {
    const level = WARN.has(event) ? 'warn' : 'info'
    process.stderr.write(`${JSON.stringify({ level, source: 'storage-quota', event, time: new Date().toISOString(), ...fields })}\n`)
  }
}

module.exports = { createLogger }
