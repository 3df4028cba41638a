'use server'
// Server actions. Expected failures (no room, bad input) come back as values for the form to
// show; only bugs throw.
import { revalidatePath } from 'next/cache'
import { redirect } from 'next/navigation'
import { ProjectIdSchema } from 'storage-quota'
import { auth } from '@/lib/auth'
import { signInAs, signOut } from '@/lib/session'
import { deleteProjectRow, findProject, insertProject } from '@/lib/db'
import { safeFileName } from '@/lib/files'
import { abortDirectUpload, beginDirectUpload, copyProjectFiles, deleteFile, finishDirectUpload, registerProject } from '@/lib/quota'

export type ActionResult = { ok: boolean; message: string } | null

export async function signInAction(formData: FormData): Promise<void> {
  const name = String(formData.get('name') ?? '').trim()
  if (name) await signInAs(name.slice(0, 100))
  redirect('/')
}

export async function signOutAction(): Promise<void> {
  await signOut()
  redirect('/')
}

async function ownedProject(userId: string, value: FormDataEntryValue | null) {
  const id = ProjectIdSchema.safeParse(value)
  return id.success ? findProject(userId, id.data) : null
}

export async function createProjectAction(_previous: ActionResult, formData: FormData): Promise<ActionResult> {
  const { userId } = await auth()
  if (!userId) return { ok: false, message: 'Sign in first.' }
  const name = String(formData.get('name') ?? '').trim()
  if (name.length < 1 || name.length > 80) return { ok: false, message: 'A project name has 1 to 80 characters.' }
  // The app owns `projects`; storage-quota then checks the quota and gives the project its directory.
  const project = await insertProject(userId, name)
  const registered = await registerProject(userId, project.id)
  if (!registered.ok) {
    await deleteProjectRow(project.id)
    return registered
  }
  revalidatePath('/')
  return { ok: true, message: `Created ${name}.` }
}

export async function copyProjectAction(_previous: ActionResult, formData: FormData): Promise<ActionResult> {
  const { userId } = await auth()
  if (!userId) return { ok: false, message: 'Sign in first.' }
  const source = await ownedProject(userId, formData.get('projectId'))
  if (!source) return { ok: false, message: 'No such project.' }
  const copy = await insertProject(userId, `${source.name} (copy)`.slice(0, 80))
  const copied = await copyProjectFiles(userId, source.id, copy.id)
  if (!copied.ok) {
    await deleteProjectRow(copy.id)
    return copied
  }
  revalidatePath('/')
  return { ok: true, message: `Copied ${source.name}.` }
}

export async function deleteFileAction(_previous: ActionResult, formData: FormData): Promise<ActionResult> {
  const { userId } = await auth()
  if (!userId) return { ok: false, message: 'Sign in first.' }
  const project = await ownedProject(userId, formData.get('projectId'))
  const name = safeFileName(formData.get('name'))
  if (!project || !name) return { ok: false, message: 'No such file.' }
  if (!(await deleteFile(userId, project.id, name))) return { ok: false, message: 'No such file.' }
  revalidatePath('/')
  return { ok: true, message: `Deleted ${name}.` }
}

// Browser-direct uploads (STORAGE_BACKEND=s3): begin → the browser PUTs to the URL → finish.

export async function beginDirectUploadAction(projectId: string, name: string, bytes: number) {
  const { userId } = await auth()
  if (!userId) return { ok: false as const, message: 'Sign in first.' }
  const project = await ownedProject(userId, projectId)
  if (!project) return { ok: false as const, message: 'No such project.' }
  const file = safeFileName(name)
  if (!file) return { ok: false as const, message: 'Use a plain file name (letters, digits, spaces, . _ - ( )).' }
  if (!Number.isSafeInteger(bytes) || bytes < 0) return { ok: false as const, message: 'The upload must declare its size.' }
  return beginDirectUpload(userId, project.id, file, bytes)
}

export async function finishDirectUploadAction(reservationId: string, name: string): Promise<ActionResult> {
  const { userId } = await auth()
  if (!userId) return { ok: false, message: 'Sign in first.' }
  const finished = await finishDirectUpload(userId, reservationId)
  if (!finished.ok) return finished
  revalidatePath('/')
  return { ok: true, message: `Uploaded ${name}.` }
}

export async function abortDirectUploadAction(reservationId: string): Promise<void> {
  const { userId } = await auth()
  if (userId) await abortDirectUpload(userId, reservationId)
}
