/**
 * The VM's recordings (record/replay): size, duration, log bit rate, QEMU build; replay to verify, bisect an IDS
 * check (the instruction window in which it first reports), export as one tar, delete.
 */
import { useCallback, useEffect, useState } from "react";
import { api, download, errorText, saveAs } from "../../lib/api.ts";
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

/** The checks bisect can look for (the IDS sweep's kinds, introspection/sweep.ts), offered as suggestions. */
const CHECKS = ["syscall-table", "syscall-text", "kernel-text", "kernel-rodata", "idt-gate", "idt-base", "cr0-wp", "cr4-smep", "cr4-smap", "page-permissions", "hidden-process", "hidden-module", "module-untrusted"];

interface BisectAnswer {
  found: boolean;
  window: { from: number; to: number } | null;
  finding: { check: string; severity: string; message: string } | null;
  serial: { before: string; during: string } | null;
  replays: number;
}

function bisectText(b: BisectAnswer): string {
  if (!b.found || !b.window) return `the check never reports in this recording (${b.replays} replays)`;
  const during = b.serial?.during.trim();
  return `first reports between instructions ${b.window.from} and ${b.window.to} (${b.replays} replays)${b.finding ? `: ${b.finding.severity} ${b.finding.message}` : ""}${during ? `; the guest printed: ${during.slice(-200)}` : ""}`;
}

export function RecordingsTab({ vm, canReplay, canBisect, canExport, canDelete, confirm }: { vm: Vm; canReplay: boolean; canBisect: boolean; canExport: boolean; canDelete: boolean; confirm: (r: ConfirmRequest) => void }) {
  const [check, setCheck] = useState("syscall-table");
  const [list, setList] = useState<Recording[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [result, setResult] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState<{ name: string; label: string } | null>(null);
  /** One long action on one recording at a time; its outcome (or the API's error) is shown in the row. */
  const run = (name: string, label: string, f: () => Promise<string>) => {
    setBusy({ name, label });
    f()
      .then(
        (text) => setResult((o) => ({ ...o, [name]: text })),
        (err: unknown) => setResult((o) => ({ ...o, [name]: errorText(err) })),
      )
      .finally(() => setBusy(null));
  };
  const load = useCallback(() => {
    api<{ recordings: Recording[] }>("GET", `/v1/recordings?vm=${encodeURIComponent(vm.name)}`).then((r) => setList(r.recordings), (err: unknown) => setError(errorText(err)));
  }, [vm.name]);
  useEffect(load, [load, vm.state]);
  if (!list) return error ? <ErrorLine error={error} /> : <p>Loading…</p>;
  return (
    <div>
      <ErrorLine error={error} />
      {canBisect && list.some((r) => r.state === "complete") && (
        <div className="inline-form">
          <label className="field">
            Check to bisect
            <input list="bisect-checks" value={check} onChange={(e) => setCheck(e.target.value)} maxLength={40} />
            <datalist id="bisect-checks">
              {CHECKS.map((c) => (
                <option key={c} value={c} />
              ))}
            </datalist>
          </label>
        </div>
      )}
      {list.length === 0 ? (
        <p>No recordings. Start the stopped VM with Record… (or <code>vigil vm start {vm.name} --record</code>).</p>
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
                      onClick={() =>
                        run(r.name, "Replaying…", async () => {
                          const x = await api<{ verified: { serial: boolean; memory: boolean | null; deterministic: boolean } | null; elapsedMs: number; speed: number | null }>("POST", `/v1/recordings/${r.name}/replay`, { body: {} });
                          return x.verified
                            ? `${x.verified.deterministic ? "deterministic" : "DIVERGED"}: serial ${x.verified.serial ? "matches" : "differs"}, RAM ${x.verified.memory === null ? "not compared" : x.verified.memory ? "matches" : "differs"}; ${(x.elapsedMs / 1000).toFixed(1)} s${x.speed ? `, ${x.speed.toFixed(2)}x real time` : ""}`
                            : "replayed (no end point to verify)";
                        })
                      }
                    >
                      {busy?.name === r.name && busy.label === "Replaying…" ? busy.label : "Replay and verify"}
                    </button>
                  )}
                  {canBisect && r.state === "complete" && (
                    <button type="button" disabled={busy !== null} onClick={() => run(r.name, "Bisecting…", async () => bisectText(await api<BisectAnswer>("POST", `/v1/recordings/${r.name}/bisect`, { body: { check } })))}>
                      {busy?.name === r.name && busy.label === "Bisecting…" ? busy.label : `Bisect ${check}`}
                    </button>
                  )}
                  {canExport && r.state === "complete" && (
                    <button
                      type="button"
                      disabled={busy !== null}
                      onClick={() =>
                        run(r.name, "Exporting…", async () => {
                          const tar = await download(`/v1/recordings/${r.name}/export`, {});
                          saveAs(tar, `${r.name}.tar`);
                          return `exported: ${bytes(tar.size)}`;
                        })
                      }
                    >
                      {busy?.name === r.name && busy.label === "Exporting…" ? busy.label : "Export"}
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
