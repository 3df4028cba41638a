// Every storage-quota call of the example lives in this file. The rest of the app gets plain
// values back: an expected refusal is `{ ok: false, message }`, never a thrown error.
import { randomUUID } from 'node:crypto'
import {
  createClient,
  formatBytes,
  QuotaExceededError,
  StorageQuotaError,
  type StorageQuotaClient,
} from 'storage-quota'

// One client (one pool) per server process; kept on globalThis so `next dev` reloads reuse it.
const globalForQuota = globalThis as unknown as { storageQuota?: StorageQuotaClient }

function quota(): StorageQuotaClient {
  if (!globalForQuota.storageQuota) {
    const defaultQuotaBytes = Number(process.env.STORAGE_QUOTA_DEFAULT_BYTES) || undefined
    globalForQuota.storageQuota = createClient(defaultQuotaBytes ? { defaultQuotaBytes } : {})
  }
  return globalForQuota.storageQuota
}

/** How long an upload may take before its reserved bytes stop counting. */
const UPLOAD_TTL_MS = 15 * 60_000

/**
 * `STORAGE_BACKEND=s3` (with `STORAGE_BUCKET` and the usual `AWS_*` variables) runs the same app
 * on an S3-compatible bucket: the browser PUTs each file straight to the bucket with a presigned
 * URL, and the server only reserves and commits. Otherwise files stream through the server to
 * local disk (`STORAGE_ROOT`).
 */
export const directUploads = process.env.STORAGE_BACKEND === 's3'

export type Refused = { ok: false; message: string }

/** What the quota bar shows. */
export interface Usage {
  usedBytes: number
  limitBytes: number
  percentUsed: number
  label: string
  state: 'normal' | 'nearing' | 'critical' | 'exceeded'
  /** Bytes counted per project, by project id. */
  projects: Map<string, number>
}

export async function migrateOnStartup(): Promise<void> {
  const { applied } = await quota().migrate()
  if (applied.length > 0) console.log(`storage-quota: applied migrations ${applied.join(', ')}`)
}

export async function getUsage(userId: string): Promise<Usage> {
  const usage = await quota().getUsage(userId, { projects: true })
  // Uploads in flight hold their bytes, so the bar counts them too.
  const taken = usage.usedBytes + usage.reservedBytes
  return {
    usedBytes: taken,
    limitBytes: usage.limitBytes,
    percentUsed: usage.percentUsed,
    label: `${formatBytes(taken)} of ${usage.limitText}`,
    state: usage.state,
    projects: new Map((usage.projects ?? []).map((project) => [project.projectId, project.usedBytes])),
  }
}

/** A new project (the app has inserted its row): checks the quota, creates its directory. */
export async function registerProject(userId: string, projectId: string): Promise<{ ok: true } | Refused> {
  try {
    await quota().registerProject(userId, projectId)
    return { ok: true }
  } catch (error) {
    return refusal(error, (e) => `Not enough storage for a new project: only ${formatBytes(e.remainingBytes)} of your ${formatBytes(e.limitBytes)} is free.`)
  }
}

/** The project's directory; created with its record on first call. */
export async function projectDirectory(userId: string, projectId: string): Promise<string> {
  const { path } = await quota().allocateProjectPath(userId, projectId)
  return path
}

/** A project's files, from its directory or its bucket (uploads in progress are hidden dot files). */
export async function listFiles(userId: string, projectId: string): Promise<Array<{ name: string; bytes: number }>> {
  await projectDirectory(userId, projectId)
  const files = await quota().listProjectFiles(userId, projectId)
  return files
    .filter((file) => !file.path.includes('/') && !file.path.startsWith('.'))
    .map((file) => ({ name: file.path, bytes: file.bytes }))
    .sort((a, b) => a.name.localeCompare(b.name))
}

export interface PendingUpload {
  ok: true
  userId: string
  projectId: string
  reservationId: string
  bytes: number
  dir: string
}

/** A refusal for lack of room as a value, worded by `message`; anything else is thrown. */
function refusal(error: unknown, message: (error: QuotaExceededError) => string): Refused {
  if (error instanceof QuotaExceededError) return { ok: false, message: message(error) }
  throw error
}

/** Before any byte is written: holds `bytes` of the user's quota for this upload. */
export async function beginUpload(userId: string, projectId: string, bytes: number): Promise<PendingUpload | Refused> {
  try {
    const dir = await projectDirectory(userId, projectId)
    const hold = await quota().reserveUpload(userId, projectId, bytes, { ttlMs: UPLOAD_TTL_MS })
    return { ok: true, userId, projectId, reservationId: hold.reservationId, bytes, dir }
  } catch (error) {
    return refusal(
      error,
      (e) => `Not enough storage: this file is ${formatBytes(bytes)} but only ${formatBytes(e.remainingBytes)} of your ${formatBytes(e.limitBytes)} is free.`,
    )
  }
}

/** The file is complete on disk: the held bytes become used bytes. */
export async function finishUpload(upload: PendingUpload): Promise<{ ok: true } | Refused> {
  try {
    await quota().commitUpload(upload.userId, upload.reservationId, upload.bytes)
    return { ok: true }
  } catch (error) {
    return refusal(error, (e) => e.message)
  }
}

/** The upload failed: give the held bytes back (harmless if already settled or expired). */
export async function abortUpload(upload: PendingUpload): Promise<void> {
  await quota().cancelUpload(upload.userId, upload.reservationId)
}

/** Deletes a file (on disk or in the bucket) and gives its measured bytes back; `null` when there is no such file. */
export async function deleteFile(userId: string, projectId: string, name: string): Promise<{ ok: true; bytes: number } | null> {
  try {
    const released = await quota().deleteProjectFile(userId, projectId, name, { deletionId: randomUUID() })
    return { ok: true, bytes: released.releasedBytes }
  } catch (error) {
    if (error instanceof StorageQuotaError && error.code === 'NOT_FOUND') return null
    throw error
  }
}

export interface DirectUpload {
  ok: true
  reservationId: string
  /** The presigned PUT URL: the browser sends the file's bytes there, expiring with the hold. */
  url: string
}

/**
 * s3: holds `bytes` of the quota and presigns a PUT of `name` into the project's prefix. The
 * browser uploads straight to the bucket; `finishDirectUpload` then charges the real size.
 */
export async function beginDirectUpload(userId: string, projectId: string, name: string, bytes: number): Promise<DirectUpload | Refused> {
  try {
    await projectDirectory(userId, projectId)
    const hold = await quota().reserveUpload(userId, projectId, bytes, { presign: true, fileName: name, ttlMs: UPLOAD_TTL_MS })
    return { ok: true, reservationId: hold.reservationId, url: hold.uploadUrl! }
  } catch (error) {
    if (error instanceof StorageQuotaError && error.reason === 'FILE_EXISTS') return { ok: false, message: `A file named ${name} already exists.` }
    return refusal(
      error,
      (e) => `Not enough storage: this file is ${formatBytes(bytes)} but only ${formatBytes(e.remainingBytes)} of your ${formatBytes(e.limitBytes)} is free.`,
    )
  }
}

/** s3: the browser's PUT is done. Charges what the bucket holds (a client that sent more than fits is refused, its object deleted). */
export async function finishDirectUpload(userId: string, reservationId: string): Promise<{ ok: true; bytes: number } | Refused> {
  try {
    const settled = await quota().commitUpload(userId, reservationId)
    return { ok: true, bytes: settled.committedBytes }
  } catch (error) {
    await quota().cancelUpload(userId, reservationId).catch(() => {})
    if (error instanceof StorageQuotaError && error.reason === 'MISMATCH') return { ok: false, message: 'The upload did not arrive. Try again.' }
    // `requestedBytes` is what the commit needed beyond the hold: the file was bigger than declared.
    return refusal(error, (e) => `Not enough storage: the file is bigger than declared and does not fit (only ${formatBytes(e.remainingBytes)} of your ${formatBytes(e.limitBytes)} is free).`)
  }
}

/** s3: the browser's PUT failed: give the held bytes back (the sweep deletes any partial object). */
export async function abortDirectUpload(userId: string, reservationId: string): Promise<void> {
  await quota().cancelUpload(userId, reservationId)
}

/**
 * Copies a project's files into a new, empty project (its row inserted by the app) and counts
 * them; refused as a whole, before anything is copied, when they do not fit.
 */
export async function copyProjectFiles(userId: string, sourceId: string, targetId: string): Promise<{ ok: true } | Refused> {
  try {
    await quota().copyProject(userId, sourceId, targetId)
    return { ok: true }
  } catch (error) {
    // A refused copy made nothing; this releases and deletes whatever an interrupted one left.
    await quota().removeProject(userId, targetId)
    return refusal(
      error,
      (e) => `Not enough storage to copy: the project is ${formatBytes(e.requestedBytes)} but only ${formatBytes(e.remainingBytes)} of your ${formatBytes(e.limitBytes)} is free.`,
    )
  }
}

/** A message for people from any storage-quota error. */
export function describeError(error: unknown): string {
  if (error instanceof StorageQuotaError) return `${error.message} (${error.code})`
  return 'Something went wrong.'
}
