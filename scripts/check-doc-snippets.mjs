#!/usr/bin/env node
// Type-checks every ts/tsx/js code block of README.md and examples/nextjs/README.md against the
// package's own typings (`npm run check:docs`, run by `npm test` through
// __test__/doc-snippets.test.mjs). Each block becomes an ES module under target/doc-snippets/
// (inside the package, so `import … from 'storage-quota'` resolves to index.d.ts as it would in
// an app), compiled with `tsc --strict`, and removed afterwards. Next.js and Clerk are not
// installed here: doc-snippets.d.ts declares the few of their names the blocks use, and the free
// names a fragment takes from its context (`userId`, `db`, …).
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { join, relative } from 'node:path'
import { promisify } from 'node:util'

const root = fileURLToPath(new URL('..', import.meta.url))
const out = join(root, 'target', 'doc-snippets')
const sources = ['README.md', 'examples/nextjs/README.md']
const LANGS = { ts: 'mts', typescript: 'mts', tsx: 'tsx', js: 'mjs', javascript: 'mjs', mjs: 'mjs' }

/** The code blocks of a Markdown text, indented ones (inside list items) included. */
export function codeBlocks(markdown) {
  const blocks = []
  const fence = /^( *)```([A-Za-z]*)[^\n]*\n([\s\S]*?)^\1```[ \t]*$/gm
  for (const match of markdown.matchAll(fence)) {
    const [, indent, lang, body] = match
    const line = markdown.slice(0, match.index).split('\n').length
    const code = body
      .split('\n')
      .map((l) => (l.startsWith(indent) ? l.slice(indent.length) : l))
      .join('\n')
    blocks.push({ lang: lang.toLowerCase(), line, code })
  }
  return blocks
}

async function main() {
  await rm(out, { recursive: true, force: true })
  await mkdir(out, { recursive: true })
  const files = []
  try {
    for (const source of sources) {
      const text = await readFile(join(root, source), 'utf8')
      for (const block of codeBlocks(text)) {
        const ext = LANGS[block.lang]
        if (!ext) continue
        const name = `${source.replaceAll(/[/.]/g, '_')}_L${block.line}.${ext}`
        // `export {}` makes every block a module: its own scope, top-level await allowed.
        await writeFile(join(out, name), `${block.code}\nexport {}\n`)
        files.push({ name, source, line: block.line })
      }
    }
    await writeFile(join(out, 'doc-snippets.d.ts'), await readFile(join(root, 'scripts', 'doc-snippets.d.ts'), 'utf8'))
    await writeFile(
      join(out, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          noEmit: true,
          allowJs: true,
          checkJs: true,
          jsx: 'preserve',
          isolatedModules: true,
          skipLibCheck: true,
          types: ['node'],
          typeRoots: [join(root, 'node_modules', '@types')],
        },
        files: ['doc-snippets.d.ts', ...files.map((f) => f.name)],
      }),
    )
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
    const result = await promisify(execFile)(process.execPath, [tsc, '-p', join(out, 'tsconfig.json')], { cwd: out }).catch((e) => e)
    const report = `${result.stdout ?? ''}${result.stderr ?? ''}`
      // Point errors at the Markdown line they come from.
      .replaceAll(/^(\S+?\.(?:mts|tsx|mjs))\((\d+),(\d+)\)/gm, (all, file, line, col) => {
        const f = files.find((x) => x.name === file)
        return f ? `${f.source}:${f.line + Number(line)}:${col}` : all
      })
    if (result.code) {
      process.stderr.write(report)
      process.stderr.write(`\n${relative(root, out)}: ${files.length} code blocks checked, errors above\n`)
      return 1
    }
    process.stdout.write(`${files.length} code blocks of ${sources.join(' and ')} type-check\n`)
    return 0
  } finally {
    await rm(out, { recursive: true, force: true })
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().then((code) => (process.exitCode = code))
}
