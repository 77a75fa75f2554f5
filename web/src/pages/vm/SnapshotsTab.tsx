/** The snapshot tree with take, revert (a fork with a new vmgenid, reason recorded) and delete. */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Snapshot, Vm } from "../../lib/types.ts";
import { when } from "../../lib/format.ts";
import type { ConfirmRequest } from "../../components/Confirm.tsx";
import { treeOrder } from "../../lib/tree.ts";
import { ErrorLine } from "../../components/ErrorLine.tsx";

export function SnapshotsTab({ vm, canModify, confirm, onChange }: { vm: Vm; canModify: boolean; confirm: (r: ConfirmRequest) => void; onChange: () => void }) {
  const [list, setList] = useState<{ current: string | null; snapshots: Snapshot[] } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [name, setName] = useState("");
  const [memory, setMemory] = useState(false);
  const [busy, setBusy] = useState(false);
  const load = useCallback(() => {
    api<{ current: string | null; snapshots: Snapshot[] }>("GET", `/v1/vms/${vm.name}/snapshots`).then(setList, (err: unknown) => setError(errorText(err)));
  }, [vm.name]);
  useEffect(load, [load, vm.generation]);
  const rows = list ? treeOrder(list.snapshots, (s) => s.name, (s) => s.parent) : [];
  return (
    <div>
      {canModify && (
        <form
          className="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            setBusy(true);
            setError(null);
            api("POST", `/v1/vms/${vm.name}/snapshots`, { body: { name, memory } })
              .then(
                () => {
                  setName("");
                  load();
                },
                (err: unknown) => setError(errorText(err)),
              )
              .finally(() => setBusy(false));
          }}
        >
          <label className="field">
            Snapshot name
            <input name="snapshot" value={name} onChange={(e) => setName(e.target.value)} required maxLength={64} />
          </label>
          <label className="check">
            <input type="checkbox" checked={memory} onChange={(e) => setMemory(e.target.checked)} disabled={vm.state !== "running"} /> with memory
          </label>
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Taking…" : "Take snapshot"}
          </button>
        </form>
      )}
      <ErrorLine error={error} />
      {!list ? (
        <p>Loading…</p>
      ) : rows.length === 0 ? (
        <p>No snapshots.</p>
      ) : (
        <ul className="snap-tree" role="tree" aria-label="Snapshots">
          {rows.map(({ item: s, depth }) => (
            <li key={s.name} role="treeitem" aria-level={depth + 1} style={{ paddingLeft: `${depth * 1.5}rem` }} data-testid={`snapshot-${s.name}`}>
              <strong>{s.name}</strong> {list.current === s.name && <span className="badge">current</span>} <span className="badge">{s.kind}</span> <small>
                generation {s.generation}, {when(s.createdAt)} by {s.createdBy}
              </small>
              {s.description && <span> — {s.description}</span>}
              {canModify && (
                <span className="row-actions">
                  <button
                    type="button"
                    onClick={() =>
                      confirm({
                        title: `Revert ${vm.name} to ${s.name}?`,
                        body: "The VM restarts from the snapshot as a new generation with a new vmgenid, so the guest reseeds its randomness. What happened since is kept in the generations tree. A snapshot below the VM's security floor is refused unless forced.",
                        action: "Revert",
                        force: "Force: revert below the VM's security floor (as --force)",
                        run: async ({ force, reason }) => {
                          await api("POST", `/v1/vms/${vm.name}/snapshots/${s.name}/revert`, { body: force ? { force, reason } : {} });
                          load();
                          onChange();
                        },
                      })
                    }
                  >
                    Revert
                  </button>
                  <button
                    type="button"
                    className="danger"
                    onClick={() =>
                      confirm({
                        title: `Delete snapshot ${s.name}?`,
                        body: "Its children move to its parent.",
                        action: "Delete",
                        danger: true,
                        run: async () => {
                          await api("DELETE", `/v1/vms/${vm.name}/snapshots/${s.name}`);
                          load();
                        },
                      })
                    }
                  >
                    Delete
                  </button>
                </span>
              )}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
