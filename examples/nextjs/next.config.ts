import type { NextConfig } from 'next'

const nextConfig: NextConfig = {
  // storage-quota is a native addon: Next.js must load it from node_modules at run time, not bundle it.
  serverExternalPackages: ['storage-quota'],
  // The example sits inside the package's repository, which has its own lockfile.
  turbopack: { root: __dirname },
}

export default nextConfig
