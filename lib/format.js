'use strict'

// Same rules as src/format.rs: binary multiples (1 KB = 1024 bytes) with the familiar
// KB/MB/GB labels, one decimal dropped when zero. Pure, so client components can use it.
const UNITS = ['B', 'KB', 'MB', 'GB', 'TB', 'PB']

/** `512 B`, `12.5 MB`, `1 GB`. */
function formatBytes(bytes) {
  if (typeof bytes !== 'number' || !Number.isFinite(bytes)) {
    throw new TypeError(`formatBytes expects a finite number, got ${String(bytes)}`)
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

module.exports = { formatBytes }
