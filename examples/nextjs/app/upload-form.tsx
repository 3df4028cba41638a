'use client'
import { useRouter } from 'next/navigation'
import { useState, type FormEvent } from 'react'
import { abortDirectUploadAction, beginDirectUploadAction, finishDirectUploadAction } from './actions'

type Answer = { ok: boolean; message: string }

/** Through the server: the file is the raw body of a PUT that the route streams to disk. */
async function viaServer(projectId: string, file: File): Promise<Answer> {
  const response = await fetch(`/api/projects/${projectId}/files?name=${encodeURIComponent(file.name)}`, {
    method: 'PUT',
    body: file,
  })
  return (await response.json()) as Answer
}

/** Straight to the bucket: hold the bytes, PUT to the presigned URL, then let the server charge what arrived. */
async function direct(projectId: string, file: File): Promise<Answer> {
  const begun = await beginDirectUploadAction(projectId, file.name, file.size)
  if (!begun.ok) return begun
  const response = await fetch(begun.url, { method: 'PUT', body: file }).catch(() => null)
  if (!response?.ok) {
    await abortDirectUploadAction(begun.reservationId)
    return { ok: false, message: 'The upload to storage failed. Try again.' }
  }
  return (await finishDirectUploadAction(begun.reservationId, file.name)) ?? { ok: false, message: 'The upload failed.' }
}

/** Uploads the chosen file: through the server to disk, or (`direct`) from the browser to the bucket. */
export function UploadForm({ projectId, direct: toBucket }: { projectId: string; direct: boolean }) {
  const router = useRouter()
  const [result, setResult] = useState<{ ok: boolean; message: string } | null>(null)
  const [pending, setPending] = useState(false)

  async function upload(event: FormEvent<HTMLFormElement>) {
    event.preventDefault()
    const form = event.currentTarget
    const file = (form.elements.namedItem('file') as HTMLInputElement).files?.[0]
    if (!file) return setResult({ ok: false, message: 'Choose a file first.' })
    setPending(true)
    try {
      const answer = toBucket ? await direct(projectId, file) : await viaServer(projectId, file)
      setResult(answer)
      if (answer.ok) {
        form.reset()
        router.refresh()
      }
    } catch {
      setResult({ ok: false, message: 'The upload failed. Try again.' })
    } finally {
      setPending(false)
    }
  }

  return (
    <form onSubmit={upload} className="inline-form" data-testid="upload-form" data-direct={toBucket ? 'true' : 'false'}>
      <input type="file" name="file" aria-label="File to upload" />
      <button type="submit" disabled={pending}>
        {pending ? 'Uploading…' : 'Upload'}
      </button>
      {result && (
        <p role="status" className={result.ok ? 'message ok' : 'message refused'}>
          {result.message}
        </p>
      )}
    </form>
  )
}
