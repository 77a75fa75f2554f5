/**
 * Move the VM to another host of the cluster (`vigil vm migrate NAME --to HOST`, on the cluster manager): live
 * pre-copy for a running VM, a cold move for a stopped one, as the manager negotiates with both agents. The
 * dialog follows the migration's row (GET /v1/migrations/ID) until it completes, fails or is cancelled, and can
 * cancel it (`--cancel`: the VM keeps running where it was).
 */
import { useEffect, useRef, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { ClusterHost, Migration, Vm } from "../../lib/types.ts";
import { DialogActions, ErrorLine } from "../../components/ErrorLine.tsx";
import { migrationProgress } from "../HostsPage.tsx";

export function MigrateDialog({ vm, canListHosts, onClose, onDone }: { vm: Vm; canListHosts: boolean; onClose: () => void; onDone: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [hosts, setHosts] = useState<string[] | null>(null);
  const [to, setTo] = useState("");
  const [maxDowntimeMs, setMaxDowntimeMs] = useState(300);
  const [error, setError] = useState<string | null>(null);
  const [migration, setMigration] = useState<Migration | null>(null);
  useEffect(() => dialog.current?.showModal(), []);
  useEffect(() => {
    if (!canListHosts) return setHosts([]);
    api<ClusterHost[]>("GET", "/v1/hosts").then(
      (all) => {
        const others = all.filter((h) => h.state === "ready" && h.name !== vm.host).map((h) => h.name);
        setHosts(others);
        setTo((t) => t || others[0] || "");
      },
      () => setHosts([]),
    );
  }, [canListHosts, vm.host]);
  // Follow the migration until it ends; the page reloads the VM once, when it has moved.
  const done = useRef(onDone);
  useEffect(() => {
    done.current = onDone;
  });
  useEffect(() => {
    if (!migration || migration.state !== "running") {
      if (migration?.state === "completed") done.current();
      return;
    }
    const timer = setTimeout(() => {
      api<Migration>("GET", `/v1/migrations/${migration.id}`).then(setMigration, (err: unknown) => setError(errorText(err)));
    }, 1000);
    return () => clearTimeout(timer);
  }, [migration]);
  const running = migration?.state === "running";
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="migrate-title" onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setError(null);
          api<Migration>("POST", `/v1/vms/${vm.name}/migrate`, { body: { to, maxDowntimeMs } }).then(setMigration, (err: unknown) => setError(errorText(err)));
        }}
      >
        <h2 id="migrate-title">
          Migrate {vm.name} from {vm.host}
        </h2>
        <label className="field">
          To host
          {hosts === null ? (
            <select disabled>
              <option>loading the hosts…</option>
            </select>
          ) : hosts.length > 0 ? (
            <select value={to} onChange={(e) => setTo(e.target.value)} disabled={migration !== null}>
              {hosts.map((h) => (
                <option key={h}>{h}</option>
              ))}
            </select>
          ) : (
            <input value={to} onChange={(e) => setTo(e.target.value)} required maxLength={63} disabled={migration !== null} />
          )}
        </label>
        <label className="field">
          Longest pause of the guest (ms)
          <input type="number" min={10} max={60000} value={maxDowntimeMs} onChange={(e) => setMaxDowntimeMs(Number(e.target.value))} disabled={migration !== null} />
        </label>
        {migration && (
          <p role="status" data-testid="migration-status">
            {migration.state === "running"
              ? migrationProgress(migration)
              : migration.state === "completed"
                ? `completed: now on ${migration.target}${migration.result?.downtimeMs !== undefined ? `, the guest paused ${migration.result.downtimeMs} ms` : ""}`
                : `${migration.state}${migration.error ? `: ${migration.error}` : ""} — the VM stays on ${migration.source}`}
          </p>
        )}
        <ErrorLine error={error} />
        {running ? (
          <div className="dialog-actions">
            <button type="button" className="danger" onClick={() => void api("POST", `/v1/vms/${vm.name}/migrate`, { body: { cancel: true } }).catch((err: unknown) => setError(errorText(err)))}>
              Cancel the migration
            </button>
          </div>
        ) : migration ? (
          <div className="dialog-actions">
            <button type="button" className="primary" onClick={() => dialog.current?.close()}>
              Close
            </button>
          </div>
        ) : (
          <DialogActions onCancel={() => dialog.current?.close()} submit="Migrate" disabled={!to} />
        )}
      </form>
    </dialog>
  );
}
