/** The introspection watch: its state, the active and cleared alarms with their evidence; start or stop it. */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { when } from "../../lib/format.ts";
import { ErrorLine } from "../../components/ErrorLine.tsx";

interface Finding {
  check: string;
  severity: string;
  message: string;
  evidence: Record<string, unknown>;
}
interface Alarm {
  key: string;
  state: "active" | "cleared";
  finding: Finding;
  raisedAt: string;
  clearedAt: string | null;
}
interface Findings {
  watch: { status: string; sweeps: number; lastSweepAt: string | null; policy: string; intervalMs: number } | null;
  active: Finding[];
  alarms: Alarm[];
}

export function IdsTab({ vm }: { vm: Vm }) {
  const [f, setF] = useState<Findings | null>(null);
  const [error, setError] = useState<string | null>(null);
  const load = useCallback(() => {
    api<Findings>("GET", `/v1/vms/${vm.name}/findings`).then(
      (r) => {
        setF(r);
        setError(null);
      },
      (err: unknown) => setError(errorText(err)),
    );
  }, [vm.name]);
  useEffect(() => {
    load();
    const id = setInterval(load, 3000);
    return () => clearInterval(id);
  }, [load]);
  const watch = (on: boolean) =>
    (on ? api("PUT", `/v1/vms/${vm.name}/watch`, { body: {} }) : api("DELETE", `/v1/vms/${vm.name}/watch`)).then(load, (err: unknown) => setError(errorText(err)));
  return (
    <div>
      <ErrorLine error={error} />
      <p data-testid="watch-status">
        Watch: {f?.watch ? `${f.watch.status}, ${f.watch.sweeps} sweeps every ${f.watch.intervalMs} ms, policy ${f.watch.policy}, last ${when(f.watch.lastSweepAt)}` : "off"}{" "}
        {f?.watch ? (
          <button type="button" onClick={() => void watch(false)}>
            Stop watch
          </button>
        ) : (
          <button type="button" onClick={() => void watch(true)} disabled={vm.state !== "running"}>
            Start watch
          </button>
        )}
      </p>
      <h2>Alarms</h2>
      {!f || f.alarms.length === 0 ? (
        <p>No alarms.</p>
      ) : (
        <ul className="alarms">
          {f.alarms.map((a) => (
            <li key={a.key} className={`alarm-${a.state}`} data-testid="alarm">
              <span className={`badge ${a.state === "active" ? "alarm" : ""}`}>{a.state}</span> <span className="badge">{a.finding.severity}</span> <strong>{a.finding.check}</strong>: {a.finding.message}{" "}
              <small>
                raised {when(a.raisedAt)}
                {a.clearedAt ? `, cleared ${when(a.clearedAt)}` : ""}
              </small>
              <details>
                <summary>Evidence</summary>
                <pre className="json">{JSON.stringify(a.finding.evidence, null, 2)}</pre>
              </details>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
