'use strict'

// Structured log events: refusals, shadow-mode would-be refusals, drift found, slow calls,
// limit changes. They go to the `logger` the app passes (a function taking `(event, fields)`,
// or an object with `info`/`warn`), which receives every event; or, by default, as JSON lines
// to stderr — warnings only (`slow_call`, `drift_found`, `shadow_refusal`), unless `logLevel:
// 'info'` or STORAGE_QUOTA_LOG=info adds the info events (`quota_refused`, `limit_changed`).
// `logger: false` or STORAGE_QUOTA_LOG=off silences the default output. Fields never include
// connection strings.

const WARN = new Set(['drift_found', 'slow_call', 'shadow_refusal', 'backfill_pending'])

function createLogger(logger, logLevel) {
  if (logger === false) return () => {}
  if (typeof logger === 'function') return (event, fields) => logger(event, fields)
  if (logger && typeof logger === 'object') {
    return (event, fields) => {
      const level = WARN.has(event) ? 'warn' : 'info'
      const write = typeof logger[level] === 'function' ? logger[level] : logger.info
      if (typeof write === 'function') write.call(logger, { source: 'storage-quota', event, ...fields })
    }
  }
  return (event, fields) => {
    // Read per event, so an operator's STORAGE_QUOTA_LOG applies to clients made before it was set.
    const setting = process.env.STORAGE_QUOTA_LOG
    if (setting === 'off') return
    const level = WARN.has(event) ? 'warn' : 'info'
    if (level === 'info' && (logLevel ?? setting) !== 'info') return
    process.stderr.write(`${JSON.stringify({ level, source: 'storage-quota', event, time: new Date().toISOString(), ...fields })}\n`)
  }
}

module.exports = { createLogger }
