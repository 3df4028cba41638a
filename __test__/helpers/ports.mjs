// A port for a server a test starts (PostgreSQL, PgBouncer, the S3 server), chosen below the
// kernel's ephemeral range. A port the kernel hands out (`listen(0)`) lies inside that range,
// which every outgoing connection draws its local port from: while such a server is down for a
// restart, a client's connection could take its port (the restart then fails to bind), or a
// client retrying against it could connect to itself (TCP simultaneous open) and wait forever
// for an answer. Below the range neither can happen.
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'

function ephemeralRange() {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number)
    if (low > 0 && high >= low) return [low, high]
  } catch {
    // Not Linux: the IANA range, which macOS uses.
  }
  return [49152, 65535]
}

function canListen(port) {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/** A port nothing listens on, between 15000 and the start of the ephemeral range. */
export async function serverPort() {
  const [low] = ephemeralRange()
  const [from, to] = low > 16000 ? [15000, low] : [1024, low]
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = from + Math.floor(Math.random() * (to - from))
    if (await canListen(port)) return port
  }
  throw new Error(`no free port between ${from} and ${to}`)
}
