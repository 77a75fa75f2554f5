/**
 * Follows one request's progress on the events stream (/v1/events?progress=ID, same origin, the session cookie)
 * while the request runs: the bar the CLI draws, for start --wait, full clones, exports and migrations.
 */
import { useEffect, useState } from "react";

export interface ProgressState {
  what: string;
  current: number;
  total: number;
}

export function useProgress(requestId: string | null): ProgressState | null {
  const [p, setP] = useState<ProgressState | null>(null);
  useEffect(() => {
    setP(null);
    if (!requestId) return;
    const es = new EventSource(`/v1/events?progress=${encodeURIComponent(requestId)}`);
    es.addEventListener("progress", (e) => {
      try {
        const d = JSON.parse((e as MessageEvent<string>).data) as ProgressState;
        setP({ what: String(d.what), current: Number(d.current), total: Number(d.total) });
      } catch {
        // a malformed event changes nothing
      }
    });
    return () => es.close();
  }, [requestId]);
  return p;
}

export function ProgressBar({ p, label }: { p: ProgressState | null; label: string }) {
  if (!p) return <div className="progress-line">{label}…</div>;
  const pct = p.total > 0 ? Math.min(100, Math.round((p.current / p.total) * 100)) : 0;
  return (
    <div className="progress-line">
      <span>
        {label}: {p.what}
      </span>
      <progress max={100} value={pct} aria-label={`${label}: ${p.what}`}>
        {pct}%
      </progress>
      <span>{pct}%</span>
    </div>
  );
}
