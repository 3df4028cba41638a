// Every storage-quota call of the example lives in this file, so switching the app to another
// part of the API is a change here only. The rest of the app gets plain values back: an expected
// refusal is `{ ok: false, message }`, never a thrown error.
import { randomUUID } from 'node:crypto'
import { cp, readdir, rm, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import {
  createClient,
  formatBytes,
  QuotaExceededError,
  StorageQuotaError,
  type StorageQuotaClient,
} from 'storage-quota'
import { db } from './db'

// One client (one pool) per server process; kept on globalThis so `next dev` reloads reuse it.
const globalForQuota = globalThis as unknown as { storageQuota?: StorageQuotaClient }

function quota(): StorageQuotaClient {
  if (!globalForQuota.storageQuota) {
    const defaultQuotaBytes = Number(process.env.STORAGE_QUOTA_DEFAULT_BYTES) || undefined
    globalForQuota.storageQuota = createClient(defaultQuotaBytes ? { defaultQuotaBytes } : {})
  }
  return globalForQuota.storageQuota
}

export type Refused = { ok: false; message: string }

/** What the quota bar shows. */
export interface Usage {
  usedBytes: number
  limitBytes: number
  percentUsed: number
  label: string
  state: 'ok' | 'warning' | 'full'
}

export async function migrateOnStartup(): Promise<void> {
  const { applied } = await quota().migrate()
  if (applied.length > 0) console.log(`storage-quota: applied migrations ${applied.join(', ')}`)
}

export async function getUsage(userId: string): Promise<Usage> {
  // checkQuota for 0 bytes reads the user's numbers without changing anything.
  const { usedBytes, reservedBytes, limitBytes, percentUsed } = await quota().checkQuota(userId, 0)
  const taken = usedBytes + reservedBytes
  return {
    usedBytes: taken,
    limitBytes,
    percentUsed,
    label: `${formatBytes(taken)} of ${formatBytes(limitBytes)}`,
    state: percentUsed >= 100 ? 'full' : percentUsed >= 80 ? 'warning' : 'ok',
  }
}

/** The project's directory; created with its record on first call. */
export async function projectDirectory(userId: string, projectId: string): Promise<string> {
  const { path } = await quota().allocateProjectPath(userId, projectId)
  return path
}

/** Files of a project directory (uploads in progress are hidden dot files). */
export async function listFiles(dir: string): Promise<Array<{ name: string; bytes: number }>> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => [])
  const files = []
  for (const entry of entries) {
    if (!entry.isFile() || entry.name.startsWith('.')) continue
    files.push({ name: entry.name, bytes: (await stat(join(dir, entry.name))).size })
  }
  return files.sort((a, b) => a.name.localeCompare(b.name))
}

export interface PendingUpload {
  ok: true
  userId: string
  projectId: string
  uploadId: string
  bytes: number
  dir: string
}

function refusal(error: unknown): Refused {
  if (error instanceof QuotaExceededError) return { ok: false, message: error.message }
  throw error
}

/**
 * Before any byte is written: is there room for `bytes`?
 * Lifecycle API: `reserveUpload(userId, projectId, bytes)`, which holds the room until commit.
 */
export async function beginUpload(userId: string, projectId: string, bytes: number): Promise<PendingUpload | Refused> {
  const check = await quota().checkQuota(userId, bytes)
  if (!check.allowed) {
    return {
      ok: false,
      message: `Not enough storage: this file is ${formatBytes(bytes)} but only ${formatBytes(check.remainingBytes)} of your ${formatBytes(check.limitBytes)} is free.`,
    }
  }
  const dir = await projectDirectory(userId, projectId)
  return { ok: true, userId, projectId, uploadId: randomUUID(), bytes, dir }
}

/**
 * After the file is complete on disk: charge it. The uploadId makes a retry count once.
 * Lifecycle API: `commitUpload(upload.uploadId)`.
 */
export async function finishUpload(upload: PendingUpload): Promise<{ ok: true } | Refused> {
  try {
    await quota().recordUpload(upload.userId, upload.projectId, upload.bytes, { uploadId: upload.uploadId })
    return { ok: true }
  } catch (error) {
    return refusal(error)
  }
}

/**
 * The upload failed after beginUpload: nothing was charged, so nothing to undo yet.
 * Lifecycle API: `cancelUpload(upload.uploadId)` releases the reservation.
 */
export async function abortUpload(_upload: PendingUpload): Promise<void> {}

/**
 * Deletes a file and gives its bytes back.
 * Lifecycle API: replace the UPDATE below with `recordDeletion(userId, projectId, bytes, …)`.
 * Until then this stand-in lowers `used_bytes` directly (the ledger has no deletion kind yet).
 */
export async function deleteFile(userId: string, projectId: string, name: string): Promise<{ ok: true; bytes: number }> {
  const file = join(await projectDirectory(userId, projectId), name)
  const { size } = await stat(file)
  await unlink(file)
  await db.query('UPDATE user_quotas SET used_bytes = greatest(used_bytes - $2, 0), updated_at = now() WHERE user_id = $1', [
    userId,
    size,
  ])
  return { ok: true, bytes: size }
}

/**
 * Copies a project's files into a new project and charges the copy to the same user; refused
 * as a whole when it does not fit. Lifecycle API: `copyProject(userId, sourceId, targetId)`.
 */
export async function copyProjectFiles(userId: string, sourceId: string, targetId: string): Promise<{ ok: true } | Refused> {
  const source = await projectDirectory(userId, sourceId)
  const bytes = (await listFiles(source)).reduce((sum, file) => sum + file.bytes, 0)
  const check = await quota().checkQuota(userId, bytes)
  if (!check.allowed) {
    return {
      ok: false,
      message: `Not enough storage to copy: the project is ${formatBytes(bytes)} but only ${formatBytes(check.remainingBytes)} of your ${formatBytes(check.limitBytes)} is free.`,
    }
  }
  const target = await projectDirectory(userId, targetId)
  for (const file of await listFiles(source)) {
    await cp(join(source, file.name), join(target, file.name), { errorOnExist: true, force: false })
  }
  try {
    await quota().recordUpload(userId, targetId, bytes, { uploadId: `copy:${sourceId}:${targetId}` })
    return { ok: true }
  } catch (error) {
    await rm(target, { recursive: true, force: true })
    return refusal(error)
  }
}

/** A message for people from any storage-quota error. */
export function describeError(error: unknown): string {
  if (error instanceof StorageQuotaError) return `${error.message} (${error.code})`
  return 'Something went wrong.'
}
