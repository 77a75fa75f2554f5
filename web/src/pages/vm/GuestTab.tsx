/**
 * What the guest agent says (`vigil vm info|ps|ping|exec`): kernel, uptime, hostname and agent version; the guest's
 * own process list (the IDS compares it with what introspection finds); the agent's round-trip times; and, with
 * vm.exec, one of the agent's allow-listed commands with its exit code and output. All of it is the guest's word:
 * shown as text, never trusted.
 */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { ErrorLine } from "../../components/ErrorLine.tsx";
import { TableHead } from "../../components/AuditTable.tsx";

interface GuestInfo {
  kernel: string;
  uptime: number;
  hostname: string;
  agent: string;
  protocol: number;
}
interface Exec {
  exitCode: number;
  stdout: string;
  stderr: string;
  truncated: boolean;
}

/** The guest's bytes (base64 in the API's answer) as text: invalid UTF-8 shows as U+FFFD, never as markup. */
export function guestText(base64: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: false }).decode(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)));
  } catch {
    return "(output not valid base64)";
  }
}

/** The words of a command line, as argv (no shell: quotes are not interpreted, as the agent runs no shell). */
export function argvOf(line: string): string[] {
  return line.trim().split(/\s+/).filter((w) => w.length > 0);
}

export function GuestTab({ vm, canExec }: { vm: Vm; canExec: boolean }) {
  const [info, setInfo] = useState<GuestInfo | null>(null);
  const [ps, setPs] = useState<{ pid: number; ppid: number; state: string; comm: string }[]>([]);
  const [rtt, setRtt] = useState<number[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [line, setLine] = useState("");
  const [exec, setExec] = useState<Exec | null>(null);
  const [busy, setBusy] = useState(false);
  const load = useCallback(() => {
    setError(null);
    api<GuestInfo>("GET", `/v1/vms/${vm.name}/guest/info`).then(setInfo, (err: unknown) => setError(errorText(err)));
    api<{ processes: typeof ps }>("GET", `/v1/vms/${vm.name}/guest/ps`).then((r) => setPs([...r.processes].sort((a, b) => a.pid - b.pid)), () => setPs([]));
  }, [vm.name]);
  useEffect(() => {
    if (vm.state === "running") load();
  }, [load, vm.state]);
  if (vm.state !== "running") return <p>The guest agent answers while the VM runs.</p>;
  return (
    <div>
      <ErrorLine error={error} />
      {info && (
        <dl>
          <dt>Kernel</dt>
          <dd>{info.kernel}</dd>
          <dt>Hostname</dt>
          <dd>{info.hostname}</dd>
          <dt>Up</dt>
          <dd>{Math.round(info.uptime)} s</dd>
          <dt>Agent</dt>
          <dd>
            {info.agent} (protocol {info.protocol})
          </dd>
        </dl>
      )}
      <div className="inline-form">
        <button type="button" onClick={load}>
          Refresh
        </button>
        <button type="button" onClick={() => api<{ rttMs: number[] }>("POST", `/v1/vms/${vm.name}/guest/ping`, { body: { count: 5 } }).then((r) => setRtt(r.rttMs), (err: unknown) => setError(errorText(err)))}>
          Ping the agent
        </button>
        {rtt && <span role="status">round trips: {rtt.map((x) => `${x.toFixed(1)} ms`).join(", ")}</span>}
      </div>
      {canExec && (
        <form
          className="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            setBusy(true);
            api<Exec>("POST", `/v1/vms/${vm.name}/guest/exec`, { body: { argv: argvOf(line) } })
              .then(setExec, (err: unknown) => setError(errorText(err)))
              .finally(() => setBusy(false));
          }}
        >
          <label className="field">
            Command (the agent's allow-list)
            <input value={line} onChange={(e) => setLine(e.target.value)} required maxLength={1000} placeholder="uname -a" />
          </label>
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Running…" : "Run in the guest"}
          </button>
        </form>
      )}
      {exec && (
        <div data-testid="exec-result">
          <p>
            exit code {exec.exitCode}
            {exec.truncated ? " (output truncated)" : ""}
          </p>
          <pre className="json">{guestText(exec.stdout)}</pre>
          {exec.stderr && <pre className="json error">{guestText(exec.stderr)}</pre>}
        </div>
      )}
      <h3>Processes (as the guest reports them)</h3>
      <table className="table" aria-label="Guest processes">
        <TableHead columns={["pid", "ppid", "state", "command"]} />
        <tbody>
          {ps.map((p) => (
            <tr key={p.pid}>
              <td>{p.pid}</td>
              <td>{p.ppid}</td>
              <td>{p.state}</td>
              <td>{p.comm}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
