import { formatBytes } from 'storage-quota'
import { auth } from '@/lib/auth'
import { listProjects } from '@/lib/db'
import { directUploads, getUsage, listFiles } from '@/lib/quota'
import { ActionForm } from './action-form'
import { copyProjectAction, createProjectAction, deleteFileAction, signInAction, signOutAction } from './actions'
import { QuotaBar } from './quota-bar'
import { UploadForm } from './upload-form'

export const dynamic = 'force-dynamic'

export default async function Home() {
  const { userId } = await auth()
  if (!userId) {
    return (
      <>
        <h1>Projects</h1>
        <form action={signInAction} className="card sign-in">
          <label>
            Your name <input name="name" required maxLength={100} autoComplete="off" />
          </label>
          <button type="submit">Sign in</button>
        </form>
      </>
    )
  }

  const [usage, projects] = await Promise.all([getUsage(userId), listProjects(userId)])
  const withFiles = await Promise.all(
    projects.map(async (project) => {
      const files = await listFiles(userId, project.id)
      // The size the quota counts for the project (getUsage), next to the files on disk.
      return { ...project, files, bytes: usage.projects.get(project.id) ?? 0 }
    }),
  )

  return (
    <>
      <header>
        <h1>Projects</h1>
        <form action={signOutAction}>
          <span className="user" data-testid="user-id">{userId}</span> <button type="submit">Sign out</button>
        </form>
      </header>
      <QuotaBar usage={usage} />
      <section className="card">
        <ActionForm action={createProjectAction} label="Create project" testId="create-project">
          <input name="name" placeholder="Project name" aria-label="Project name" required maxLength={80} />
        </ActionForm>
      </section>
      {withFiles.length === 0 && <p className="empty">No projects yet.</p>}
      {withFiles.map((project) => (
        <section className="card project" key={project.id} data-testid="project" data-project-id={project.id}>
          <div className="project-head">
            <h2>{project.name}</h2>
            <span className="size" data-testid="project-size">{formatBytes(project.bytes)}</span>
          </div>
          <ul className="files">
            {project.files.map((file) => (
              <li key={file.name} data-testid="file" data-name={file.name}>
                <span>{file.name}</span>
                <span className="size">{formatBytes(file.bytes)}</span>
                <ActionForm action={deleteFileAction} label="Delete" testId="delete-file">
                  <input type="hidden" name="projectId" value={project.id} />
                  <input type="hidden" name="name" value={file.name} />
                </ActionForm>
              </li>
            ))}
          </ul>
          <UploadForm projectId={project.id} direct={directUploads} />
          <ActionForm action={copyProjectAction} label="Copy project" testId="copy-project">
            <input type="hidden" name="projectId" value={project.id} />
          </ActionForm>
        </section>
      ))}
    </>
  )
}
