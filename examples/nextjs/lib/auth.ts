// Who is signed in. With Clerk, this line becomes:
//   export { auth } from '@clerk/nextjs/server'
export { auth } from './session'
