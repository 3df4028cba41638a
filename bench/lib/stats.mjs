// Percentiles, medians and formatting.

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]
}

/** ops/s and latency percentiles (ms) of one measurement. */
export function summarize(latenciesMs, elapsedMs) {
  const sorted = Float64Array.from(latenciesMs).sort()
  return {
    ops: sorted.length,
    opsPerSec: (sorted.length / elapsedMs) * 1000,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
  }
}

export function median(values) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return NaN
  const mid = v.length >> 1
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

export const fmtOps = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–')
export const fmtMs = (x) => (Number.isFinite(x) ? (x < 1 ? x.toFixed(3) : x < 10 ? x.toFixed(2) : x.toFixed(1)) : '–')
export const fmtRatio = (x) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : '–')

/** A GitHub-flavoured Markdown table. */
export function table(header, rows) {
  const line = (cells) => `| ${cells.join(' | ')} |`
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n')
}
