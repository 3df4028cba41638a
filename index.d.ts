// Typings of the hand-written JS layer. Result shapes come from the generated binding.d.ts
// (built from the Rust `///` docs), so they cannot drift from the addon.
import type { z } from 'zod'
import type {
  ClientOptions as NativeClientOptions,
  DiskUsage,
  PathCheck,
  ProjectLocation,
  MigrationInfo,
  MigrationStatus,
  ProjectStoragePath,
  QuotaCheck,
  RecordedUpload,
  RecordUploadOptions,
} from './binding'

export type {
  DiskUsage,
  PathCheck,
  ProjectLocation,
  MigrationInfo,
  MigrationStatus,
  ProjectStoragePath,
  QuotaCheck,
  RecordedUpload,
  RecordUploadOptions,
}

/**
 * Where project paths point: directories under `storageRoot` (the default), or keys under
 * `s3://{bucket}/{prefix}/`, whose allocation writes nothing anywhere.
 */
export type StorageOptions = { backend: 'local' } | { backend: 's3'; bucket: string; prefix?: string }

/** Options for `createClient`; see README "Options". */
export type ClientOptions = Omit<NativeClientOptions, 'storage'> & { storage?: StorageOptions }

/** Every code a StorageQuotaError can carry. Codes are stable across versions. */
export type StorageQuotaErrorCode =
  | 'INVALID_ARGUMENT'
  | 'QUOTA_EXCEEDED'
  | 'NOT_FOUND'
  | 'FORBIDDEN'
  | 'CONFLICT'
  | 'MIGRATION_REQUIRED'
  | 'MIGRATION_FAILED'
  | 'DB_UNAVAILABLE'
  | 'DB_TIMEOUT'
  | 'DB_ERROR'
  | 'STORAGE_ERROR'
  | 'UNSAFE_PATH'
  | 'CLIENT_CLOSED'
  | 'INTERNAL'

/** The one error type of the package: match on `code`. */
export declare class StorageQuotaError extends Error {
  readonly code: StorageQuotaErrorCode
  /** For INVALID_ARGUMENT from validation: which argument, and what was wrong. */
  readonly issues?: Array<{ path: string; message: string }>
  constructor(code: StorageQuotaErrorCode, message: string, details?: Record<string, unknown>)
}

/** An upload that does not fit. The message is written for people. */
export declare class QuotaExceededError extends StorageQuotaError {
  readonly code: 'QUOTA_EXCEEDED'
  readonly requestedBytes: number
  readonly usedBytes: number
  readonly reservedBytes: number
  readonly limitBytes: number
  readonly remainingBytes: number
}

/** A row of `user_quotas`. */
export interface UserQuota {
  id: string
  userId: string
  limitBytes: number
  usedBytes: number
  reservedBytes: number
  createdAt: Date
  updatedAt: Date
}

export type SimulationJobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled'

/** A row of `simulation_jobs` (phase 2). */
export interface SimulationJob {
  id: string
  projectId: string
  userId: string
  status: SimulationJobStatus
  parameters: Record<string, unknown>
  outputPath: string | null
  error: string | null
  createdAt: Date
  updatedAt: Date
  startedAt: Date | null
  finishedAt: Date | null
}

export declare class StorageQuotaClient {
  constructor(options?: ClientOptions)
  /** Whether `bytes` more fit. Resolves `{ allowed: false, … }` rather than rejecting for lack of room. */
  checkQuota(userId: string, bytes: number): Promise<QuotaCheck>
  /** `{storageRoot}/{userId}/{projectId}/`, created on first call. NOT_FOUND / FORBIDDEN for unknown or foreign projects. */
  allocateProjectPath(userId: string, projectId: string): Promise<ProjectStoragePath>
  /** Where the project lives (or would): `{ backend, key, path }`. Pure: no database, no disk. */
  projectPathFor(userId: string, projectId: string): ProjectLocation
  /** Whether `candidate` (relative to the project directory, or absolute) lies inside it. */
  validatePath(userId: string, projectId: string, candidate: string): Promise<PathCheck>
  /** The project's usage counted from its files on disk; symlinks are never followed. */
  diskUsage(userId: string, projectId: string): Promise<DiskUsage>
  /** Charges an upload; rejects with a QuotaExceededError when it does not fit. */
  recordUpload(userId: string, projectId: string, bytes: number, options?: RecordUploadOptions): Promise<RecordedUpload>
  /** Applies pending migrations. */
  migrate(): Promise<{ applied: number[] }>
  /** Reverts the `steps` (default 1) most recent migrations. */
  rollback(steps?: number): Promise<{ reverted: number[] }>
  migrationStatus(): Promise<MigrationStatus>
  /** Calls in flight finish; later calls reject with CLIENT_CLOSED. */
  close(): Promise<void>
}

/** A client with its own pool; unset options come from DATABASE_URL / POSTGRES_URL and STORAGE_ROOT. */
export declare function createClient(options?: ClientOptions): StorageQuotaClient
/** The client behind the module-level functions, created from the environment on first use. */
export declare function getDefaultClient(): StorageQuotaClient
export declare function closeDefaultClient(): Promise<void>

export declare function checkQuota(userId: string, bytes: number): Promise<QuotaCheck>
export declare function allocateProjectPath(userId: string, projectId: string): Promise<ProjectStoragePath>
export declare function recordUpload(
  userId: string,
  projectId: string,
  bytes: number,
  options?: RecordUploadOptions,
): Promise<RecordedUpload>
export declare function projectPathFor(userId: string, projectId: string): ProjectLocation
export declare function validatePath(userId: string, projectId: string, candidate: string): Promise<PathCheck>
export declare function diskUsage(userId: string, projectId: string): Promise<DiskUsage>
export declare function migrate(): Promise<{ applied: number[] }>
export declare function rollback(steps?: number): Promise<{ reverted: number[] }>
export declare function migrationStatus(): Promise<MigrationStatus>

/** `512 B`, `12.5 MB`, `1 GB`: binary multiples (1 KB = 1024 bytes). */
export declare function formatBytes(bytes: number): string

export declare const UserIdSchema: z.ZodType<string>
export declare const ProjectIdSchema: z.ZodType<string>
export declare const BytesSchema: z.ZodType<number>
export declare const UploadIdSchema: z.ZodType<string>
export declare const RecordUploadOptionsSchema: z.ZodType<RecordUploadOptions>
export declare const ClientOptionsSchema: z.ZodType<ClientOptions>
export declare const StorageOptionsSchema: z.ZodType<StorageOptions>
export declare const CandidatePathSchema: z.ZodType<string>
export declare const ProjectLocationSchema: z.ZodType<ProjectLocation>
export declare const PathCheckSchema: z.ZodType<PathCheck>
export declare const DiskUsageSchema: z.ZodType<DiskUsage>
export declare const QuotaCheckSchema: z.ZodType<QuotaCheck>
export declare const RecordedUploadSchema: z.ZodType<RecordedUpload>
export declare const StorageBackendSchema: z.ZodType<'local' | 's3'>
export declare const ProjectStoragePathSchema: z.ZodType<ProjectStoragePath>
export declare const UserQuotaSchema: z.ZodType<UserQuota>
export declare const SimulationJobStatusSchema: z.ZodType<SimulationJobStatus>
export declare const SimulationJobSchema: z.ZodType<SimulationJob>
