'use strict'

// The backfill's progress for a person: a redrawn bar with rows done, rate and ETA on a
// terminal; a plain line every few seconds (and a last one) when the output is a file or a CI log.

const PLAIN_EVERY_MS = 5000

function duration(seconds) {
  if (!Number.isFinite(seconds)) return '?'
  const s = Math.max(0, Math.round(seconds))
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  const pad = (x) => String(x).padStart(2, '0')
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`
}

class Progress {
  constructor(stream, label = 'backfill') {
    this.stream = stream
    this.label = label
    this.tty = Boolean(stream.isTTY)
    this.started = performance.now()
    this.first = null
    this.lastPlain = 0
    this.drawn = false
    this.line = ''
  }

  /** One line: phase, rows done of the total, rate, ETA. */
  describe(p) {
    const n = (x) => Number(x).toLocaleString('en-US')
    const elapsed = (performance.now() - this.started) / 1000
    if (this.first === null) this.first = { scanned: p.scanned, at: elapsed }
    const rate = elapsed > this.first.at ? (p.scanned - this.first.scanned) / (elapsed - this.first.at) : 0
    const total = p.totalProjects ?? 0
    const left = Math.max(total - p.scanned, 0)
    const eta = p.phase === 'scan' && rate > 0 ? duration(left / rate) : p.done ? '0:00' : '?'
    const share = total > 0 ? Math.min(p.scanned / total, 1) : p.done ? 1 : 0
    const phase = { scan: 'projects', catchup: 'projects', validate: 'validating foreign keys', done: 'done' }[p.phase]
    return { share, text: `${n(p.scanned)}/${n(total)} ${phase}  ${n(Math.round(rate))}/s  ETA ${eta}` }
  }

  update(p, described = this.describe(p)) {
    const { share, text } = described
    if (this.tty) {
      const width = 30
      const full = Math.round(share * width)
      this.line = `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${(share * 100).toFixed(1).padStart(5)}%  ${text}`
      this.stream.write(`\r\x1b[2K${this.line}`)
      this.drawn = true
    } else {
      const now = performance.now()
      if (now - this.lastPlain >= PLAIN_EVERY_MS || p.done) {
        this.lastPlain = now
        this.stream.write(`${this.label}: ${(share * 100).toFixed(1)}%  ${text}\n`)
      }
    }
  }

  /** A message above the bar (the bar is redrawn on the next update). */
  log(message) {
    if (this.tty && this.drawn) this.stream.write('\r\x1b[2K')
    this.stream.write(`${message}\n`)
    if (this.tty && this.drawn) this.stream.write(this.line)
  }

  end() {
    if (this.tty && this.drawn) this.stream.write('\n')
  }
}

/**
 * The online preparation of big tables (`storage-quota migrate` before an upgrade's migrations):
 * the step in progress, its rows done of the total with rate and ETA, and the steps done.
 */
class PreparationProgress extends Progress {
  describe(p) {
    const n = (x) => Number(x).toLocaleString('en-US')
    const elapsed = (performance.now() - this.started) / 1000
    if (this.first?.next !== p.next) this.first = { rows: p.rowsDone, at: elapsed, next: p.next }
    const rate = elapsed > this.first.at ? (p.rowsDone - this.first.rows) / (elapsed - this.first.at) : 0
    const total = p.rowsTotal ?? 0
    const rows = total > 0 ? `  ${n(p.rowsDone)}/${n(total)} rows  ${n(Math.round(rate))}/s  ETA ${rate > 0 ? duration(Math.max(total - p.rowsDone, 0) / rate) : '?'}` : ''
    const share = p.tasksTotal > 0 ? p.tasksDone / p.tasksTotal : 1
    return { share, text: `step ${Math.min(p.tasksDone + 1, p.tasksTotal)}/${p.tasksTotal}: ${p.done ? 'done' : p.next}${rows}` }
  }

  update(p) {
    const { share, text } = this.describe(p)
    if (!this.tty && text.split(':')[0] !== this.lastStep) {
      this.lastStep = text.split(':')[0]
      this.lastPlain = 0
    }
    super.update(p, { share, text })
  }
}

module.exports = { Progress, PreparationProgress }
