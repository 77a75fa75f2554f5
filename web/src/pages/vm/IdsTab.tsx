/**
 * The introspection watch: its state, the active and cleared alarms with their evidence; start or stop it. "Sweep
 * now" is `vigil introspect VM`: one sweep from outside with what it found and the processes and modules the VMI
 * view sees (names read from guest memory: text, never trusted).
 */
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
interface Sweep {
  sweep: number;
  findings: Finding[];
  processes: { pid: number; comm: string }[];
  modules: { name: string }[];
  kernel: { release: string };
  durationMs: number;
}
interface Findings {
  watch: { status: string; sweeps: number; lastSweepAt: string | null; policy: string; intervalMs: number } | null;
  active: Finding[];
  alarms: Alarm[];
}

export function IdsTab({ vm }: { vm: Vm }) {
  const [f, setF] = useState<Findings | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [sweep, setSweep] = useState<Sweep | null>(null);
  const [sweeping, setSweeping] = useState(false);
  const sweepNow = () => {
    setSweeping(true);
    api<Sweep>("POST", `/v1/vms/${vm.name}/introspect`, { body: {} })
      .then(setSweep, (err: unknown) => setError(errorText(err)))
      .finally(() => setSweeping(false));
  };
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
        )}{" "}
        <button type="button" onClick={sweepNow} disabled={vm.state !== "running" || sweeping}>
          {sweeping ? "Sweeping…" : "Sweep now"}
        </button>
      </p>
      {sweep && (
        <details open data-testid="sweep-result">
          <summary>
            Sweep {sweep.sweep} of kernel {sweep.kernel.release}: {sweep.findings.length === 0 ? "nothing found" : `${sweep.findings.length} findings`} in {Math.round(sweep.durationMs)} ms — {sweep.processes.length} processes, {sweep.modules.length} modules seen from outside
          </summary>
          <ul>
            {sweep.findings.map((x, i) => (
              <li key={i}>
                <span className="badge alarm">{x.severity}</span> {x.check}: {x.message}
              </li>
            ))}
          </ul>
          <p>Processes: {sweep.processes.map((p) => `${p.pid} ${p.comm}`).join(", ")}</p>
          <p>Modules: {sweep.modules.map((m) => m.name).join(", ") || "none"}</p>
        </details>
      )}
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
