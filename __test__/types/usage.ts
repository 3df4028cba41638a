// Compiled with `tsc --noEmit` by types.test.mjs: the public typings must accept what a
// Next.js server action writes, and the Zod schemas must agree with the TypeScript types.
import {
  checkQuota,
  allocateProjectPath,
  recordUpload,
  createClient,
  StorageQuotaError,
  QuotaExceededError,
  QuotaCheckSchema,
  UserQuotaSchema,
  SimulationJobSchema,
  RecordedUploadSchema,
  ReservationSchema,
  MovedProjectSchema,
  MoveProjectOptionsSchema,
  ReserveUploadOptionsSchema,
  StorageOptionsSchema,
  moveProjectStorage,
  SettledReservationSchema,
  ReleasedSchema,
  PrunedHistorySchema,
  UsageSchema,
  reserveUpload,
  commitUpload,
  getUsage,
  reconcile,
  getDefaultClient,
  formatBytes,
  quotaState,
  type Reservation,
  type MovedProject,
  type MoveProjectOptions,
  type ReserveUploadOptions,
  type SettledReservation,
  type Released,
  type PrunedHistory,
  type Usage,
  type QuotaCheck,
  type ProjectStoragePath,
  type RecordedUpload,
  type UserQuota,
  type SimulationJob,
  type StorageQuotaErrorCode,
} from 'storage-quota'
import type { z } from 'zod'

export async function uploadAction(userId: string, projectId: string, size: number) {
  const check: QuotaCheck = await checkQuota(userId, size)
  if (!check.allowed) return { ok: false as const, message: `Only ${check.remainingBytes} bytes left` }
  const dir: ProjectStoragePath = await allocateProjectPath(userId, projectId)
  try {
    const recorded: RecordedUpload = await recordUpload(userId, projectId, size, { uploadId: 'abc' })
    return { ok: true as const, path: dir.path, used: recorded.usedBytes }
  } catch (error) {
    if (error instanceof QuotaExceededError) return { ok: false as const, message: error.message, free: error.remainingBytes }
    if (error instanceof StorageQuotaError) {
      const code: StorageQuotaErrorCode = error.code
      return { ok: false as const, message: code }
    }
    throw error
  }
}

const client = createClient({ databaseUrl: 'postgres://localhost/app', poolSize: 4 })
void client.close()

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false
const quotaCheckAgrees: Same<z.infer<typeof QuotaCheckSchema>, QuotaCheck> = true
const userQuotaAgrees: Same<z.infer<typeof UserQuotaSchema>, UserQuota> = true
const jobAgrees: Same<z.infer<typeof SimulationJobSchema>, SimulationJob> = true
const recordedAgrees: Same<z.infer<typeof RecordedUploadSchema>, RecordedUpload> = true
const reservationAgrees: Same<z.infer<typeof ReservationSchema>, Reservation> = true
const settledAgrees: Same<z.infer<typeof SettledReservationSchema>, SettledReservation> = true
const releasedAgrees: Same<z.infer<typeof ReleasedSchema>, Released> = true
const usageAgrees: Same<z.infer<typeof UsageSchema>, Usage> = true
const prunedAgrees: Same<z.infer<typeof PrunedHistorySchema>, PrunedHistory> = true
void [quotaCheckAgrees, userQuotaAgrees, jobAgrees, recordedAgrees, reservationAgrees, settledAgrees, releasedAgrees, usageAgrees, prunedAgrees]
const movedAgrees: Same<z.infer<typeof MovedProjectSchema>, MovedProject> = true
const moveOptionsAgree: Same<z.infer<typeof MoveProjectOptionsSchema>, MoveProjectOptions> = true
const reserveOptionsAgree: Same<z.infer<typeof ReserveUploadOptionsSchema>, ReserveUploadOptions> = true
const storageOptionsAgree: Same<z.infer<typeof StorageOptionsSchema>, StorageOptions> = true
void [movedAgrees, moveOptionsAgree, reserveOptionsAgree, storageOptionsAgree]

// A browser-direct upload on the s3 backend: the server action presigns, the browser PUTs,
// the next action commits (charged the object's real size).
export async function presignAction(userId: string, projectId: string, name: string, size: number) {
  const held = await reserveUpload(userId, projectId, size, { presign: true, fileName: name, ttlMs: 15 * 60_000 })
  const url: string | undefined = held.uploadUrl
  return { reservationId: held.reservationId, url, expiresAt: held.expiresAt.toISOString() }
}
export async function moveAction(userId: string, projectId: string) {
  const moved: MovedProject = await moveProjectStorage(userId, projectId, { to: 's3' })
  return `${moved.files} files, ${moved.bytes} bytes now at ${moved.path.path}`
}

export async function reservedUploadAction(userId: string, projectId: string, size: number) {
  const held = await reserveUpload(userId, projectId, size, { ttlMs: 60_000 })
  const done = await commitUpload(userId, held.reservationId, size - 1)
  const usage = await getUsage(userId, { projects: true })
  const state: 'normal' | 'nearing' | 'critical' | 'exceeded' = usage.state
  // With { projects: true } the list is there: no `?.`, no `!`.
  const biggest = usage.projects.reduce((a, p) => Math.max(a, p.usedBytes), 0)
  return { status: done.status, bar: `${usage.percentUsed}% ${formatBytes(usage.usedBytes)}`, state, same: quotaState(usage.percentUsed) === state, biggest }
}

// Module functions and client methods take the same overloads.
export async function adminTasks(userId: string) {
  await reconcile({ fix: true })
  await reconcile(userId, { disk: true })
  await getDefaultClient().reconcile({ fix: true })
  const plain = await getUsage(userId)
  // @ts-expect-error without { projects: true } the list may be absent
  void plain.projects.length
}

// @ts-expect-error bytes are numbers
void checkQuota('user_1', '10')

// Storage utilities and the object-store option (issue 4).
import {
  projectPathFor,
  validatePath,
  diskUsage,
  PathCheckSchema,
  DiskUsageSchema,
  type PathCheck,
  type DiskUsage,
  type ProjectLocation,
  type StorageOptions,
} from 'storage-quota'

export async function saveUploadedFile(userId: string, projectId: string, fileName: string) {
  const where: ProjectLocation = projectPathFor(userId, projectId)
  const check: PathCheck = await validatePath(userId, projectId, fileName)
  if (!check.inside) return { ok: false as const, message: check.reason }
  const usage: DiskUsage = await diskUsage(userId, projectId)
  // A discriminated union: here `check.path` is a string.
  const path: string = check.path
  return { ok: true as const, path, base: where.path, bytes: usage.bytes }
}

const s3Storage: StorageOptions = { backend: 's3', bucket: 'acme-uploads', prefix: 'projects' }
void createClient({ storage: s3Storage }).close()
// README "Behind a connection pooler" and docs/scaling.md: the pool options.
void createClient({ poolSize: 2, idleTimeoutMs: 10_000 }).close()
void createClient({ minConnections: 0, maxLifetimeMs: 1_800_000, statementCache: false }).close()
// @ts-expect-error the s3 backend needs a bucket
void createClient({ storage: { backend: 's3' } })

const pathCheckAgrees: Same<z.infer<typeof PathCheckSchema>, PathCheck> = true
const diskUsageAgrees: Same<z.infer<typeof DiskUsageSchema>, DiskUsage> = true
void [pathCheckAgrees, diskUsageAgrees]

// Every module-level function has exactly the client method's signatures (overloads included).
import * as pkg from 'storage-quota'
type Client = pkg.StorageQuotaClient
const sameSignatures: [
  Same<typeof pkg.checkQuota, Client['checkQuota']>,
  Same<typeof pkg.allocateProjectPath, Client['allocateProjectPath']>,
  Same<typeof pkg.projectPathFor, Client['projectPathFor']>,
  Same<typeof pkg.validatePath, Client['validatePath']>,
  Same<typeof pkg.diskUsage, Client['diskUsage']>,
  Same<typeof pkg.recordUpload, Client['recordUpload']>,
  Same<typeof pkg.reserveUpload, Client['reserveUpload']>,
  Same<typeof pkg.commitUpload, Client['commitUpload']>,
  Same<typeof pkg.cancelUpload, Client['cancelUpload']>,
  Same<typeof pkg.sweepExpiredReservations, Client['sweepExpiredReservations']>,
  Same<typeof pkg.recordDeletion, Client['recordDeletion']>,
  Same<typeof pkg.registerProject, Client['registerProject']>,
  Same<typeof pkg.copyProject, Client['copyProject']>,
  Same<typeof pkg.removeProject, Client['removeProject']>,
  Same<typeof pkg.setQuotaLimit, Client['setQuotaLimit']>,
  Same<typeof pkg.getUsage, Client['getUsage']>,
  Same<typeof pkg.reconcile, Client['reconcile']>,
  Same<typeof pkg.migrate, Client['migrate']>,
  Same<typeof pkg.rollback, Client['rollback']>,
  Same<typeof pkg.migrationStatus, Client['migrationStatus']>,
] = [true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true]
void sameSignatures
