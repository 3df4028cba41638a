// The default logger is quiet: warnings only on stderr; info events when asked for.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { createLogger } = require('../lib/log.js')

/** The lines `fn` writes to stderr, with STORAGE_QUOTA_LOG set to `setting` meanwhile. */
function stderrOf(setting, fn) {
  const saved = process.env.STORAGE_QUOTA_LOG
  const write = process.stderr.write
  const lines = []
  if (setting === undefined) delete process.env.STORAGE_QUOTA_LOG
  else process.env.STORAGE_QUOTA_LOG = setting
  process.stderr.write = (chunk) => lines.push(String(chunk)) > 0
  try {
    fn()
  } finally {
    process.stderr.write = write
    if (saved === undefined) delete process.env.STORAGE_QUOTA_LOG
    else process.env.STORAGE_QUOTA_LOG = saved
  }
  return lines.map((line) => JSON.parse(line).event)
}

const everyEvent = (log) => {
  for (const event of ['quota_refused', 'limit_changed', 'slow_call', 'drift_found', 'shadow_refusal']) log(event, { userId: 'u' })
}

test('by default only warnings reach stderr', () => {
  assert.deepEqual(stderrOf(undefined, () => everyEvent(createLogger())), ['slow_call', 'drift_found', 'shadow_refusal'])
})

test('info events on opt-in: logLevel or STORAGE_QUOTA_LOG=info', () => {
  const all = ['quota_refused', 'limit_changed', 'slow_call', 'drift_found', 'shadow_refusal']
  assert.deepEqual(stderrOf(undefined, () => everyEvent(createLogger(undefined, 'info'))), all)
  assert.deepEqual(stderrOf('info', () => everyEvent(createLogger())), all)
  assert.deepEqual(stderrOf('info', () => everyEvent(createLogger(undefined, 'warn'))), all.slice(2))
})

test('off silences the default output, never an explicit logger', () => {
  assert.deepEqual(stderrOf('off', () => everyEvent(createLogger())), [])
  assert.deepEqual(stderrOf(undefined, () => everyEvent(createLogger(false))), [])
  const seen = []
  assert.deepEqual(stderrOf('off', () => everyEvent(createLogger((event) => seen.push(event)))), [])
  assert.equal(seen.length, 5, 'an app logger gets every event')
})
