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
void [quotaCheckAgrees, userQuotaAgrees, jobAgrees]

// @ts-expect-error bytes are numbers
void checkQuota('user_1', '10')
