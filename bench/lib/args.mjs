// The bench scripts' command-line flags: `--name=value` (the value may itself contain `=`) or a
// bare `--name` (true), as one object keyed by name.
export function flags(argv = process.argv.slice(2)) {
  return Object.fromEntries(
    argv.map((a) => {
      const [k, ...v] = a.replace(/^--/, '').split('=')
      return [k, v.length ? v.join('=') : true]
    }),
  )
}
