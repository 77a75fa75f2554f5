/** Lineage, the location timeline ("where has your VM been") and the VM's audit trail. */
import { useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { AuditRecord, Vm } from "../../lib/types.ts";
import { when } from "../../lib/format.ts";
import { AuditTable } from "../../components/AuditTable.tsx";
import { ErrorLine } from "../../components/ErrorLine.tsx";

interface History {
  lineage: Record<string, unknown> | null;
  locations: { host: string; path: string; since: string; until: string | null }[];
  events: AuditRecord[];
}

export function HistoryTab({ vm }: { vm: Vm }) {
  const [h, setH] = useState<History | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    api<History>("GET", `/v1/vms/${vm.name}/history`).then(setH, (err: unknown) => setError(errorText(err)));
  }, [vm.name, vm.generation, vm.state]);
  if (error) return <ErrorLine error={error} />;
  if (!h) return <p>Loading…</p>;
  return (
    <div>
      <h2>Lineage</h2>
      <pre className="json">{JSON.stringify(h.lineage ?? {}, null, 2)}</pre>
      <h2>Where it has been</h2>
      <ol className="timeline">
        {h.locations.map((l, i) => (
          <li key={i}>
            <strong>{l.host}</strong> <code>{l.path}</code> — {when(l.since)} → {l.until ? when(l.until) : "now"}
          </li>
        ))}
      </ol>
      <h2>Audit trail</h2>
      <AuditTable records={h.events} />
    </div>
  );
}
