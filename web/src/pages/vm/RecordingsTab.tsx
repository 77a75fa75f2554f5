/** The VM's recordings (record/replay): size, duration, log bit rate, QEMU build; replay to verify, delete. */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { bytes, when } from "../../lib/format.ts";
import type { ConfirmRequest } from "../../components/Confirm.tsx";
import { ErrorLine } from "../../components/ErrorLine.tsx";
import { TableHead } from "../../components/AuditTable.tsx";

interface Recording {
  id: string;
  name: string;
  state: string;
  generation: number;
  qemu: { version: string };
  startedAt: string;
  durationMs: number | null;
  storedBytes: number | null;
  logKbps: number | null;
  instructions: number | null;
  endReason: string | null;
  error: string | null;
}

export function RecordingsTab({ vm, canReplay, canDelete, confirm }: { vm: Vm; canReplay: boolean; canDelete: boolean; confirm: (r: ConfirmRequest) => void }) {
  const [list, setList] = useState<Recording[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [result, setResult] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState<string | null>(null);
  const load = useCallback(() => {
    api<{ recordings: Recording[] }>("GET", `/v1/recordings?vm=${encodeURIComponent(vm.name)}`).then((r) => setList(r.recordings), (err: unknown) => setError(errorText(err)));
  }, [vm.name]);
  useEffect(load, [load, vm.state]);
  if (!list) return error ? <ErrorLine error={error} /> : <p>Loading…</p>;
  return (
    <div>
      <ErrorLine error={error} />
      {list.length === 0 ? (
        <p>No recordings. Start the VM with <code>vigil vm start {vm.name} --record</code>.</p>
      ) : (
        <table className="table">
          <TableHead columns={["recording", "state", "started", "duration", "stored", "log rate", "QEMU", "actions"]} />
          <tbody>
            {list.map((r) => (
              <tr key={r.id}>
                <td>{r.name}</td>
                <td>
                  <span className={`badge ${r.error ? "alarm" : ""}`}>{r.state}</span> {r.endReason ?? ""}
                </td>
                <td>{when(r.startedAt)}</td>
                <td>{r.durationMs === null ? "—" : `${(r.durationMs / 1000).toFixed(1)} s`}</td>
                <td>{bytes(r.storedBytes)}</td>
                <td>{r.logKbps === null ? "—" : `${r.logKbps.toFixed(1)} kbit/s`}</td>
                <td>{r.qemu.version}</td>
                <td>
                  {canReplay && r.state === "complete" && (
                    <button
                      type="button"
                      disabled={busy !== null}
                      onClick={() => {
                        setBusy(r.name);
                        api<{ verified: { serial: boolean; memory: boolean | null; deterministic: boolean } | null; elapsedMs: number; speed: number | null }>("POST", `/v1/recordings/${r.name}/replay`, { body: {} })
                          .then(
                            (x) =>
                              setResult((o) => ({
                                ...o,
                                [r.name]: x.verified
                                  ? `${x.verified.deterministic ? "deterministic" : "DIVERGED"}: serial ${x.verified.serial ? "matches" : "differs"}, RAM ${x.verified.memory === null ? "not compared" : x.verified.memory ? "matches" : "differs"}; ${(x.elapsedMs / 1000).toFixed(1)} s${x.speed ? `, ${x.speed.toFixed(2)}x real time` : ""}`
                                  : "replayed (no end point to verify)",
                              })),
                            (err: unknown) => setResult((o) => ({ ...o, [r.name]: errorText(err) })),
                          )
                          .finally(() => setBusy(null));
                      }}
                    >
                      {busy === r.name ? "Replaying…" : "Replay and verify"}
                    </button>
                  )}
                  {canDelete && r.state !== "recording" && (
                    <button type="button" className="danger" onClick={() => confirm({ title: `Delete recording ${r.name}?`, body: "Its log, serial transcript and disk copies are removed.", action: "Delete", danger: true, run: async () => (await api("DELETE", `/v1/recordings/${r.name}`), load()) })}>
                      Delete
                    </button>
                  )}
                  {result[r.name] && <p role="status">{result[r.name]}</p>}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
