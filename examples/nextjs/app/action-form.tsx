'use client'
import { useActionState, type ReactNode } from 'react'
import type { ActionResult } from './actions'

/** A form for a server action that answers with `{ ok, message }`; shows the message. */
export function ActionForm({
  action,
  label,
  children,
  testId,
}: {
  action: (previous: ActionResult, formData: FormData) => Promise<ActionResult>
  label: string
  children?: ReactNode
  testId: string
}) {
  const [result, formAction, pending] = useActionState(action, null)
  return (
    <form action={formAction} className="inline-form" data-testid={testId}>
      {children}
      <button type="submit" disabled={pending}>
        {label}
      </button>
      {result && (
        <p role="status" className={result.ok ? 'message ok' : 'message refused'}>
          {result.message}
        </p>
      )}
    </form>
  )
}
