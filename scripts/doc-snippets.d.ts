// What the README's code blocks take from outside the package when they are type-checked
// (scripts/check-doc-snippets.mjs): the few Next.js and Clerk names they use (neither is
// installed at the repository root), and the names a fragment has from its context.
declare module 'next/server' {
  export class NextResponse extends Response {
    static json(body: unknown, init?: ResponseInit): NextResponse
  }
  export interface NextRequest extends Request {
    readonly nextUrl: URL
  }
}
declare module 'next' {
  export interface NextConfig {
    serverExternalPackages?: string[]
  }
}
declare module '@clerk/nextjs/server' {
  export function auth(): Promise<{ userId: string | null; orgId: string | null }>
}

// The app's own pg pool (`db.query(sql, params)`) and the ids a server action has at hand.
declare const db: { query(sql: string, params?: unknown[]): Promise<{ rows: any[] }> }
declare const userId: string
declare const projectId: string
declare const adminId: string
// A client the app made with createClient().
declare const client: import('storage-quota').StorageQuotaClient
// The lifecycle fragment: an upload in progress and the app's own streaming helper.
declare const request: Request
declare const declaredSize: number
declare const dir: { path: string }
declare function streamToDisk(body: ReadableStream<Uint8Array> | null, dir: string, options: { maxBytes: number }): Promise<number>
declare const uploadId: string
declare const deletionId: string
declare const bytes: number
declare const newSize: number
declare const oldSize: number
