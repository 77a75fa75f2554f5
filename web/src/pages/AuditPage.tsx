/** The live audit log: the newest records, new ones as they happen, filters, and `audit verify` from the page. */
import { useEffect, useMemo, useState } from "react";
import { api, errorText } from "../lib/api.ts";
import type { AuditRecord } from "../lib/types.ts";
import { useAuditEvents } from "../lib/events.ts";
import { may } from "../lib/permissions.ts";
import { useSession } from "../session.tsx";
import { AuditTable } from "../components/AuditTable.tsx";
import { ErrorLine } from "../components/ErrorLine.tsx";

const KEEP = 2000;

interface Verify {
  ok: boolean;
  records: number;
  checkpoints: number;
  lastSeq: number;
  firstBad?: { seq: number; reason: string };
}

export function AuditPage() {
  const { session } = useSession();
  const [records, setRecords] = useState<AuditRecord[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [f, setF] = useState({ actor: "", action: "", result: "", target: "" });
  const [verify, setVerify] = useState<Verify | null>(null);
  const [verifying, setVerifying] = useState(false);
  const load = () =>
    api<{ records: AuditRecord[] }>("GET", "/v1/audit?tail=true&limit=500").then(
      (r) => setRecords(r.records),
      (err: unknown) => setError(errorText(err)),
    );
  useEffect(() => void load(), []);
  useAuditEvents(
    (r) => setRecords((old) => (old.some((o) => o.seq === r.seq) ? old : [...old, r].slice(-KEEP))),
    () => void load(),
  );
  const shown = useMemo(
    () =>
      records
        .filter((r) => (!f.actor || r.actor.includes(f.actor)) && (!f.action || r.action.includes(f.action)) && (!f.result || r.result === f.result) && (!f.target || `${r.target.kind} ${r.target.name ?? ""}`.includes(f.target)))
        .slice()
        .reverse(),
    [records, f],
  );
  return (
    <main className="page">
      <div className="toolbar">
        <h1>Audit log</h1>
        <input aria-label="Actor" placeholder="actor" value={f.actor} onChange={(e) => setF({ ...f, actor: e.target.value })} />
        <input aria-label="Action" placeholder="action (vm.start…)" value={f.action} onChange={(e) => setF({ ...f, action: e.target.value })} />
        <input aria-label="Target" placeholder="target" value={f.target} onChange={(e) => setF({ ...f, target: e.target.value })} />
        <select aria-label="Result" value={f.result} onChange={(e) => setF({ ...f, result: e.target.value })}>
          <option value="">any result</option>
          <option>ok</option>
          <option>denied</option>
          <option>error</option>
          <option>intent</option>
        </select>
        {may(session, "audit.read") && (
          <button
            type="button"
            disabled={verifying}
            onClick={() => {
              setVerifying(true);
              api<Verify>("GET", "/v1/audit/verify")
                .then(setVerify, (err: unknown) => setError(errorText(err)))
                .finally(() => setVerifying(false));
            }}
          >
            {verifying ? "Verifying…" : "Verify the log"}
          </button>
        )}
      </div>
      {verify && (
        <p className={verify.ok ? "ok" : "error"} role="status" data-testid="verify-result">
          {verify.ok ? `Intact: ${verify.records} records, ${verify.checkpoints} checkpoints, last #${verify.lastSeq}.` : `BROKEN at #${verify.firstBad?.seq}: ${verify.firstBad?.reason}`}
        </p>
      )}
      <ErrorLine error={error} />
      <AuditTable records={shown} />
    </main>
  );
}
