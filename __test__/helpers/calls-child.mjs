// Child process of memory.test.mjs: 20 rounds of 64 concurrent calls through the package, reads
// and charges alternating over the users of USERS (JSON: [[userId, projectId], …]), as
// bench/lib/rss-child.mjs serves them. Prints one JSON line: the number of calls and, with
// MAPPED=1, how much of the addon's code is mapped into this process (/proc/self/pagemap): all
// of it, and the inside of its `.text.cold` section (TLS and S3 code, link/cold.ld).
import { closeSync, openSync, readFileSync, readSync } from 'node:fs'
import { createClient } from 'storage-quota' // the package's own ESM entry, as an app imports it

const users = JSON.parse(process.env.USERS)
const client = createClient({ databaseUrl: process.env.DATABASE_URL, storageRoot: process.env.STORAGE_ROOT, logger: false, poolSize: 16, minConnections: 16 })
let n = 0
const call = () => {
  const i = n++
  const [user, project] = users[(i >> 1) % users.length]
  return i % 2 === 0 ? client.checkQuota(user, 1) : client.recordUpload(user, project, 1, { uploadId: `call-${i}` })
}
for (let round = 0; round < 20; round++) await Promise.all(Array.from({ length: 64 }, call))

/** How many 4 KB pages of [start, start + bytes) are mapped in this process. */
function pagesPresent(start, bytes) {
  const pages = Math.floor(bytes / 4096)
  if (pages <= 0) return 0
  const entries = Buffer.alloc(pages * 8)
  const fd = openSync('/proc/self/pagemap', 'r')
  try {
    readSync(fd, entries, 0, entries.length, Number(start / 4096n) * 8)
  } finally {
    closeSync(fd)
  }
  let present = 0
  for (let i = 0; i < pages; i++) if (entries.readBigUInt64LE(i * 8) >> 63n) present++
  return present
}

/** The addon's mappings, and the address and size of one of its sections (ELF headers). */
function addon(sectionName) {
  const maps = readFileSync('/proc/self/maps', 'utf8').split('\n').filter((line) => /storage-quota[^/]*\.node$/.test(line))
  const path = maps[0].slice(maps[0].indexOf('/'))
  const base = BigInt(`0x${maps[0].split('-')[0]}`)
  const code = maps.filter((line) => line.split(/\s+/)[1].includes('x')).map((line) => line.split(/\s+/)[0].split('-').map((x) => BigInt(`0x${x}`)))
  const elf = readFileSync(path)
  const shoff = Number(elf.readBigUInt64LE(0x28))
  const [size, count, names] = [elf.readUInt16LE(0x3a), elf.readUInt16LE(0x3c), elf.readUInt16LE(0x3e)]
  const header = (i) => shoff + i * size
  const strings = Number(elf.readBigUInt64LE(header(names) + 0x18))
  let section = null
  for (let i = 0; i < count; i++) {
    const at = strings + elf.readUInt32LE(header(i))
    if (elf.toString('latin1', at, elf.indexOf(0, at)) === sectionName) {
      section = { start: base + elf.readBigUInt64LE(header(i) + 0x10), bytes: Number(elf.readBigUInt64LE(header(i) + 0x20)) }
    }
  }
  return { path, code, section }
}

if (process.env.MAPPED !== '1') {
  console.log(JSON.stringify({ calls: n }))
} else {
  const { path, code, section } = addon('.text.cold')
  // The section's first and last blocks share page-cache folios (128 KB here) with the code
  // around it; everything between is TLS and S3 code only.
  const edge = 256 * 1024
  console.log(
    JSON.stringify({
      calls: n,
      path,
      codeBytes: code.reduce((sum, [start, end]) => sum + pagesPresent(start, Number(end - start)) * 4096, 0),
      coldPages: section && pagesPresent(section.start + BigInt(edge), section.bytes - 2 * edge),
    }),
  )
}
await client.close()
