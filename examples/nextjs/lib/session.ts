// The stand-in session: a cookie holding a Clerk-style user id, set by the sign-in form.
// `auth()` has the shape of Clerk's: it resolves to `{ userId }`, null when signed out.
import { createHash } from 'node:crypto'
import { cookies } from 'next/headers'
import { UserIdSchema } from 'storage-quota'

const COOKIE = 'example_user_id'

export async function auth(): Promise<{ userId: string | null }> {
  const parsed = UserIdSchema.safeParse((await cookies()).get(COOKIE)?.value)
  return { userId: parsed.success ? parsed.data : null }
}

/** Signs in as a Clerk-style id derived from the name, so the same name is the same user. */
export async function signInAs(name: string): Promise<string> {
  const userId = `user_${createHash('sha256').update(name).digest('hex').slice(0, 27)}`
  ;(await cookies()).set(COOKIE, userId, { httpOnly: true, sameSite: 'lax', path: '/' })
  return userId
}

export async function signOut(): Promise<void> {
  ;(await cookies()).delete(COOKIE)
}
