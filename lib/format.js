'use strict'

// Same rules as src/format.rs: binary multiples (1 KB = 1024 bytes) with the familiar
// KB/MB/GB labels, one decimal dropped when zero. Pure, so client components can use it.
const { StorageQuotaError } = require('./errors.js')

const UNITS = ['B', 'KB', 'MB', 'GB', 'TB', 'PB']

/** `512 B`, `12.5 MB`, `1 GB`. Throws a StorageQuotaError (INVALID_ARGUMENT) for a non-finite or non-number value. */
function formatBytes(bytes) {
  if (typeof bytes !== 'number' || !Number.isFinite(bytes)) {
    // Only the type is named: String(bytes) could run a hostile toString().
    const got = typeof bytes === 'number' ? String(bytes) : typeof bytes
    throw new StorageQuotaError('INVALID_ARGUMENT', `formatBytes expects a finite number, got ${got}`)
  }
  if (bytes < 0) return `-${formatBytes(-bytes)}`
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024
    unit += 1
  }
  if (unit === 0) return `${Math.round(bytes)} B`
  const rounded = Math.round(value * 10) / 10
  if (rounded >= 1024 && unit < UNITS.length - 1) return `1 ${UNITS[unit + 1]}`
  return `${Number.isInteger(rounded) ? rounded : rounded.toFixed(1)} ${UNITS[unit]}`
}

/** `used / limit` in percent with two decimals (a zero limit is 100 % full). Same as the addon. */
function quotaPercentage(usedBytes, limitBytes) {
  if (![usedBytes, limitBytes].every((n) => typeof n === 'number' && Number.isFinite(n))) {
    throw new StorageQuotaError('INVALID_ARGUMENT', 'quotaPercentage expects two finite numbers')
  }
  if (limitBytes <= 0) return 100
  return Math.round((usedBytes / limitBytes) * 10000) / 100
}

/** `normal` below 75 %, `nearing` from 75 %, `critical` from 90 %, `exceeded` from 100 %. */
function quotaState(percentUsed) {
  // A number only: comparing anything else would coerce it (running a hostile valueOf).
  if (typeof percentUsed !== 'number' || Number.isNaN(percentUsed)) {
    throw new StorageQuotaError('INVALID_ARGUMENT', `quotaState expects a number, got ${typeof percentUsed}`)
  }
  if (percentUsed >= 100) return 'exceeded'
  if (percentUsed >= 90) return 'critical'
  if (percentUsed >= 75) return 'nearing'
  return 'normal'
}

module.exports = { formatBytes, quotaPercentage, quotaState }
