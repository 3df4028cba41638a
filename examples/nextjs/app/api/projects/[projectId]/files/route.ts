// PUT /api/projects/:projectId/files?name=report.csv with the file as the raw body.
// A route handler rather than a server action: it gets the body as a stream, so the file goes to
// disk as it arrives (a server action receives the whole FormData in memory, capped by
// serverActions.bodySizeLimit). The declared size is reserved from the quota before any byte is
// written, the stream is cut off past it, and the reservation is committed or cancelled.
import { randomUUID } from 'node:crypto'
import { link, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { NextResponse, type NextRequest } from 'next/server'
import { ProjectIdSchema } from 'storage-quota'
import { auth } from '@/lib/auth'
import { findProject } from '@/lib/db'
import { safeFileName, UploadSizeError, writeCapped } from '@/lib/files'
import { abortUpload, beginUpload, describeError, directUploads, finishUpload } from '@/lib/quota'

export const runtime = 'nodejs'

type Answer = { ok: true; message: string } | { ok: false; message: string }

function answer(status: number, body: Answer) {
  return NextResponse.json(body, { status })
}

export async function PUT(request: NextRequest, { params }: { params: Promise<{ projectId: string }> }) {
  const { userId } = await auth()
  if (!userId) return answer(401, { ok: false, message: 'Sign in first.' })
  // On s3 the browser uploads straight to the bucket (upload-form.tsx); nothing streams through here.
  if (directUploads) return answer(405, { ok: false, message: 'Uploads go straight to storage: use the presigned URL.' })
  const projectId = ProjectIdSchema.safeParse((await params).projectId)
  if (!projectId.success || !(await findProject(userId, projectId.data))) {
    return answer(404, { ok: false, message: 'No such project.' })
  }
  const name = safeFileName(request.nextUrl.searchParams.get('name'))
  if (!name) return answer(400, { ok: false, message: 'Use a plain file name (letters, digits, spaces, . _ - ( )).' })
  // Content-Length, or X-Upload-Bytes for a chunked body: either way a promise the stream must keep.
  const declared = Number(request.headers.get('content-length') ?? request.headers.get('x-upload-bytes'))
  if (!Number.isSafeInteger(declared) || declared < 0) {
    return answer(411, { ok: false, message: 'The upload must declare its size.' })
  }
  if (!request.body) return answer(400, { ok: false, message: 'The upload has no body.' })

  const upload = await beginUpload(userId, projectId.data, declared)
  if (!upload.ok) return answer(413, upload)
  const temporary = join(upload.dir, `.upload-${randomUUID()}`)
  try {
    await writeCapped(request.body, temporary, declared)
  } catch (error) {
    await abortUpload(upload)
    if (error instanceof UploadSizeError) return answer(400, { ok: false, message: error.message })
    throw error
  }
  // Link under its name before charging: a taken name fails here, before anything is charged.
  const final = join(upload.dir, name)
  try {
    await link(temporary, final)
  } catch (error) {
    await abortUpload(upload)
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    return answer(409, { ok: false, message: `A file named ${name} already exists.` })
  } finally {
    await unlink(temporary).catch(() => {})
  }
  const charged = await finishUpload(upload).catch((error) => ({ ok: false as const, message: describeError(error) }))
  if (!charged.ok) {
    await abortUpload(upload).catch(() => {})
    await unlink(final).catch(() => {})
    return answer(413, charged)
  }
  return answer(200, { ok: true, message: `Uploaded ${name}.` })
}
