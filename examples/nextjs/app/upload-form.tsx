'use client'
import { useRouter } from 'next/navigation'
import { useState, type FormEvent } from 'react'

/** Sends the chosen file as the raw body of a PUT, so the server can stream it to disk. */
export function UploadForm({ projectId }: { projectId: string }) {
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
      const response = await fetch(`/api/projects/${projectId}/files?name=${encodeURIComponent(file.name)}`, {
        method: 'PUT',
        body: file,
      })
      const answer = (await response.json()) as { ok: boolean; message: string }
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
    <form onSubmit={upload} className="inline-form" data-testid="upload-form">
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
