/** Every file holding the VM's data, live and removed ("where did it get left"), and purge. */
import { useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { bytes, when } from "../../lib/format.ts";
import { navigate } from "../../lib/router.ts";
import type { ConfirmRequest } from "../../components/Confirm.tsx";
import { ErrorLine } from "../../components/ErrorLine.tsx";
import { TableHead } from "../../components/AuditTable.tsx";

interface DataFile {
  id: string;
  host: string;
  path: string;
  purpose: string;
  size: number | null;
  createdAt: string;
  removedAt: string | null;
}

function Files({ files }: { files: DataFile[] }) {
  if (files.length === 0) return <p>None.</p>;
  return (
    <table className="table">
      <TableHead columns={["host", "path", "purpose", "size", "since", "removed"]} />
      <tbody>
        {files.map((f) => (
          <tr key={f.id}>
            <td>{f.host}</td>
            <td>
              <code>{f.path}</code>
            </td>
            <td>{f.purpose}</td>
            <td>{bytes(f.size)}</td>
            <td>{when(f.createdAt)}</td>
            <td>{f.removedAt ? when(f.removedAt) : ""}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function DataTab({ vm, canPurge, confirm }: { vm: Vm; canPurge: boolean; confirm: (r: ConfirmRequest) => void }) {
  const [w, setW] = useState<{ live: DataFile[]; removed: DataFile[] } | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    api<{ live: DataFile[]; removed: DataFile[] }>("GET", `/v1/vms/${vm.name}/where`).then(setW, (err: unknown) => setError(errorText(err)));
  }, [vm.name, vm.generation]);
  if (error) return <ErrorLine error={error} />;
  if (!w) return <p>Loading…</p>;
  return (
    <div>
      {canPurge && (
        <button
          type="button"
          className="danger"
          onClick={() =>
            confirm({
              title: `Purge ${vm.name}?`,
              body: `The VM is destroyed and every registered copy of its data that vigil can reach is overwritten: ${w.live.length} files now. This cannot be undone.`,
              action: "Purge",
              danger: true,
              typeToConfirm: vm.name,
              run: async () => {
                await api("POST", `/v1/vms/${vm.name}/purge`, { body: { force: vm.state !== "stopped" } });
                navigate({ page: "inventory" });
              },
            })
          }
        >
          Purge every copy
        </button>
      )}
      <h2>Live ({w.live.length})</h2>
      <Files files={w.live} />
      <h2>Removed ({w.removed.length})</h2>
      <Files files={w.removed} />
    </div>
  );
}
