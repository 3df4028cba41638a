// File names and the capped stream from a request body to disk.
import { open, unlink } from 'node:fs/promises'

/** Plain names only: no separators, no leading dot (dot files are uploads in progress). */
export function safeFileName(name: unknown): string | null {
  if (typeof name !== 'string') return null
  return /^[A-Za-z0-9_-][A-Za-z0-9 ._()-]{0,119}$/.test(name) && !name.includes('..') ? name : null
}

export class UploadSizeError extends Error {}

/**
 * Writes `body` to `path` (created, never overwritten) and stops as soon as more than
 * `limitBytes` arrive, so a client that declared less than it sends cannot overshoot what was
 * checked against the quota. The file is removed on any failure. Resolves to the bytes written.
 */
export async function writeCapped(body: ReadableStream<Uint8Array>, path: string, limitBytes: number): Promise<number> {
  let written = 0
  const file = await open(path, 'wx', 0o600)
  const reader = body.getReader()
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      written += value.byteLength
      if (written > limitBytes) throw new UploadSizeError(`The upload sent more than the ${limitBytes} bytes it declared.`)
      await file.write(value)
    }
    if (written !== limitBytes) {
      throw new UploadSizeError(`The upload ended after ${written} of the ${limitBytes} bytes it declared.`)
    }
    await file.close()
    return written
  } catch (error) {
    reader.releaseLock()
    await file.close().catch(() => {})
    await unlink(path).catch(() => {})
    throw error
  }
}
