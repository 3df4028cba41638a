// `npm run pack:local`: the release packaging of one target, on this machine. Builds the
// linux-x64-gnu release binary, lays out the main package and its platform package the way a
// release does (`napi artifacts` moves the binary into npm/<platform>/, `napi pre-publish` writes
// `optionalDependencies`), and packs both with `npm pack` into dist-pack/.
//
// The work happens in a staging copy so the repository's package.json and npm/ stay as committed.
// The staged package.json lists only the targets built here: `napi pre-publish` refuses a target
// whose binary is missing, and an `optionalDependencies` entry for a package that was never
// published would send `npm install` to the registry for it.
import { execFileSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const out = join(root, 'dist-pack')
const stage = join(out, 'stage')
const TARGET = 'x86_64-unknown-linux-gnu'
const PLATFORM = 'linux-x64-gnu'

function run(command, args, cwd = root) {
  console.log(`$ ${command} ${args.join(' ')}`)
  return execFileSync(command, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' })
}

const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const binary = `${pkg.napi.binaryName}.${PLATFORM}.node`

// The host is x86_64-unknown-linux-gnu, so the plain release build (target/release, shared with
// `npm run build`) is that target's binary; --target would build everything a second time.
if (process.platform !== 'linux' || process.arch !== 'x64') {
  throw new Error(`pack:local builds ${TARGET} and must run on linux x64 (this is ${process.platform}-${process.arch})`)
}
process.stdout.write(run('npm', ['run', '--silent', 'build']))
if (!existsSync(join(root, binary))) throw new Error(`napi build did not produce ${binary}`)

rmSync(out, { recursive: true, force: true })
mkdirSync(stage, { recursive: true })
for (const entry of pkg.files) cpSync(join(root, entry), join(stage, entry), { recursive: true })
cpSync(join(root, 'README.md'), join(stage, 'README.md'))
cpSync(join(root, 'npm', PLATFORM), join(stage, 'npm', PLATFORM), { recursive: true })
cpSync(join(root, binary), join(stage, binary))
writeFileSync(
  join(stage, 'package.json'),
  `${JSON.stringify({ ...pkg, napi: { ...pkg.napi, targets: [TARGET] } }, null, 2)}\n`,
)

const napi = join(root, 'node_modules', '.bin', 'napi')
// Copies storage-quota.linux-x64-gnu.node from the staging root into npm/linux-x64-gnu/.
process.stdout.write(run(napi, ['artifacts', '--output-dir', '.', '--npm-dir', 'npm'], stage))
// Writes optionalDependencies; publishing is the release's job, not this script's.
process.stdout.write(run(napi, ['pre-publish', '--npm-dir', 'npm', '--tag-style', 'npm', '--skip-optional-publish'], stage))
rmSync(join(stage, binary))

const staged = JSON.parse(readFileSync(join(stage, 'package.json'), 'utf8'))
const platformPackage = `${pkg.name}-${PLATFORM}`
if (staged.optionalDependencies?.[platformPackage] !== pkg.version) {
  throw new Error(`napi pre-publish did not write optionalDependencies.${platformPackage}`)
}

const tarballs = []
for (const dir of [stage, join(stage, 'npm', PLATFORM)]) {
  const [packed] = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', out], dir))
  tarballs.push(packed)
}
rmSync(stage, { recursive: true, force: true })

const [main, platform] = tarballs
if (main.files.some((file) => file.path.endsWith('.node'))) throw new Error('the main package must not contain a .node file')
if (!platform.files.some((file) => file.path === binary)) throw new Error(`${platform.name} is missing ${binary}`)
for (const packed of tarballs) {
  console.log(`${join('dist-pack', packed.filename)}  ${packed.files.length} files, ${(packed.size / 1024).toFixed(0)} KB`)
}
console.log(`optionalDependencies: ${JSON.stringify(staged.optionalDependencies)}`)
console.log(`dist-pack/: ${readdirSync(out).join(', ')}`)
