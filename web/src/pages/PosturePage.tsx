/**
 * The stale-fleet report (`vigil posture stale`, docs/transience.md "Scheduling"): every dormant VM and template the
 * user may read, its posture and how far behind its scan is, worst first. With vm.quarantine, "Rescan behind VMs
 * now" (`vigil posture rescan`) rescans the ones behind and says what it did. On the cluster manager the report
 * is every host's, each VM with its host.
 */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../lib/api.ts";
import { may } from "../lib/permissions.ts";
import { navigate } from "../lib/router.ts";
import { useSession } from "../session.tsx";
import { when } from "../lib/format.ts";
import { ErrorLine } from "../components/ErrorLine.tsx";
import { TableHead } from "../components/AuditTable.tsx";

interface StaleRow {
  vm: string;
  host?: string;
  template: boolean;
  state: string;
  reasons: string[];
  scannedAt: string | null;
  ageDays: number | null;
  advisoriesChanged: boolean | null;
  rulesChanged: boolean | null;
  ranSince: boolean;
  pending: number;
  worstSeverity: string | null;
  findings: number;
  behind: boolean;
}

const yes = (b: boolean | null): string => (b === null ? "?" : b ? "yes" : "no");

export function PosturePage() {
  const { session } = useSession();
  const [rows, setRows] = useState<StaleRow[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [outcome, setOutcome] = useState<string | null>(null);
  const load = useCallback(() => {
    api<{ vms: StaleRow[] }>("GET", "/v1/posture/stale").then((r) => setRows(r.vms), (err: unknown) => setError(errorText(err)));
  }, []);
  useEffect(load, [load]);
  const onManager = session?.server === "manager";
  return (
    <main className="page">
      <h1>Stale fleet</h1>
      <p>Dormant VMs and templates, worst first: how far behind each one's last offline scan is. vigil rescans the ones it scanned before when the advisory data or rules change, and every 6 hours.</p>
      <ErrorLine error={error} />
      {may(session, "vm.quarantine") && (
        <p>
          <button
            type="button"
            className="primary"
            disabled={busy}
            onClick={() => {
              setBusy(true);
              setOutcome(null);
              api<{ scanned: string[]; failed: { vm: string; error: string }[] }>("POST", "/v1/posture/rescan", { body: {} })
                .then(
                  (r) => {
                    setOutcome(r.scanned.length === 0 && r.failed.length === 0 ? "Nothing was behind." : `Rescanned ${r.scanned.join(", ") || "none"}.${r.failed.map((f) => ` ${f.vm} failed: ${f.error}.`).join("")}`);
                    load();
                  },
                  (err: unknown) => setError(errorText(err)),
                )
                .finally(() => setBusy(false));
            }}
          >
            {busy ? "Rescanning…" : "Rescan behind VMs now"}
          </button>{" "}
          {outcome && <span data-testid="rescan-outcome">{outcome}</span>}
        </p>
      )}
      {rows === null ? (
        <p>Loading…</p>
      ) : rows.length === 0 ? (
        <p>No dormant VMs.</p>
      ) : (
        <table className="table" aria-label="Stale fleet">
          <TableHead columns={["VM", ...(onManager ? ["host"] : []), "posture", "scanned", "new advisories", "new rules", "ran since", "pending", "findings", "behind"]} />
          <tbody>
            {rows.map((r) => (
              <tr key={`${r.host ?? ""}/${r.vm}`} data-testid={`stale-${r.vm}`} title={r.reasons.join("; ")}>
                <td>
                  <button type="button" className="linklike" onClick={() => navigate({ page: "vm", name: r.vm, tab: "posture" })}>
                    {r.vm}
                  </button>
                  {r.template && <small> (template)</small>}
                </td>
                {onManager && <td>{r.host ?? ""}</td>}
                <td>
                  <span className={`badge ${r.state === "vulnerable" || r.state === "infected" ? "alarm" : r.state === "stale" ? "warn" : ""}`}>{r.state}</span>
                </td>
                <td>{r.scannedAt === null ? "never" : `${when(r.scannedAt)} (${r.ageDays} d)`}</td>
                <td>{yes(r.advisoriesChanged)}</td>
                <td>{yes(r.rulesChanged)}</td>
                <td>{r.scannedAt === null ? "–" : r.ranSince ? "yes" : "no"}</td>
                <td>{r.scannedAt === null ? "–" : `${r.pending}${r.worstSeverity ? ` (worst ${r.worstSeverity})` : ""}`}</td>
                <td>{r.scannedAt === null ? "–" : r.findings}</td>
                <td>{r.scannedAt === null ? "not scanned" : r.behind ? "rescan due" : "–"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </main>
  );
}
