import type { Usage } from '@/lib/quota'

/** Used storage against the limit, coloured by the package's state: normal, nearing (75 %), critical (90 %), exceeded. */
export function QuotaBar({ usage }: { usage: Usage }) {
  const width = Math.min(100, Math.max(0, usage.percentUsed))
  return (
    <section className="quota" data-testid="quota" data-state={usage.state}>
      <div className="quota-text">
        <strong data-testid="quota-label">{usage.label}</strong>
        <span data-testid="quota-percent">{usage.percentUsed.toFixed(1)}%</span>
      </div>
      <div
        className={`bar ${usage.state}`}
        role="meter"
        aria-label="Storage used"
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={usage.percentUsed}
      >
        <div className="fill" style={{ width: `${width}%` }} />
      </div>
    </section>
  )
}
