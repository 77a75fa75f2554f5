/** Transience: the VM's posture (current, stale, vulnerable, infected) with every reason, quarantine, and a scan. */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { when } from "../../lib/format.ts";
import type { ConfirmRequest } from "../../components/Confirm.tsx";
import { ErrorLine } from "../../components/ErrorLine.tsx";

interface Posture {
  state: string;
  reasons: string[];
  policy: { scope: string; [k: string]: unknown };
  quarantined: { since: string; reason: string; actor: string } | null;
  lastScan: Record<string, unknown> | null;
  lastRunningAt: string | null;
  lastPatchedAt: string | null;
}

export function PostureTab({ vm, canScan, canQuarantine, confirm }: { vm: Vm; canScan: boolean; canQuarantine: boolean; confirm: (r: ConfirmRequest) => void }) {
  const [p, setP] = useState<Posture | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const load = useCallback(() => {
    api<Posture>("GET", `/v1/vms/${vm.name}/posture`).then(setP, (err: unknown) => setError(errorText(err)));
  }, [vm.name]);
  useEffect(load, [load, vm.state]);
  const run = (label: string, f: () => Promise<unknown>) => {
    setBusy(label);
    setError(null);
    f()
      .then(load, (err: unknown) => setError(errorText(err)))
      .finally(() => setBusy(null));
  };
  if (!p) return error ? <ErrorLine error={error} /> : <p>Loading…</p>;
  const alarm = p.state === "vulnerable" || p.state === "infected";
  return (
    <div>
      <p>
        Posture: <span className={`badge ${alarm ? "alarm" : p.state === "stale" ? "warn" : ""}`} data-testid="posture-state">{p.state}</span> — policy from scope <code>{p.policy.scope}</code>
        {p.quarantined && (
          <>
            {" "}
            <span className="badge alarm">quarantined</span> since {when(p.quarantined.since)} by {p.quarantined.actor}: {p.quarantined.reason}
          </>
        )}
      </p>
      <ErrorLine error={error} />
      <div className="actions">
        {canScan && (
          <button type="button" disabled={busy !== null || vm.state !== "stopped"} title={vm.state !== "stopped" ? "Scans read a stopped VM's disks" : undefined} onClick={() => run("scan", () => api("POST", `/v1/vms/${vm.name}/scan`))}>
            {busy === "scan" ? "Scanning…" : "Scan disks offline"}
          </button>
        )}
        {canQuarantine &&
          (p.quarantined ? (
            <button type="button" disabled={busy !== null} onClick={() => run("release", () => api("POST", `/v1/vms/${vm.name}/release`))}>
              Release from quarantine
            </button>
          ) : (
            <button type="button" className="danger" disabled={busy !== null} onClick={() =>
                confirm({
                  title: `Quarantine ${vm.name}?`,
                  body: "Its NICs move into the quarantine zone at once (no restart): it reaches only the quarantine services.",
                  action: "Quarantine",
                  danger: true,
                  reasonRequired: true,
                  run: async ({ reason }) => {
                    await api("POST", `/v1/vms/${vm.name}/quarantine`, { body: { reason } });
                    load();
                  },
                })
              }
            >
              Quarantine
            </button>
          ))}
      </div>
      <h2>Reasons</h2>
      {p.reasons.length ? (
        <ul>
          {p.reasons.map((r, i) => (
            <li key={i}>{r}</li>
          ))}
        </ul>
      ) : (
        <p>None.</p>
      )}
      <p>
        Last running {when(p.lastRunningAt)}; last patched {when(p.lastPatchedAt)}.
      </p>
      <h2>Last scan</h2>
      <pre className="json">{p.lastScan ? JSON.stringify(p.lastScan, null, 2) : "Never scanned."}</pre>
    </div>
  );
}
