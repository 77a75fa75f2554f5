/**
 * Export the VM as one signed .vigil bundle, downloaded by the browser (`vigil vm export`): optionally with its
 * snapshots and RAM, optionally refused by importers after a date. The daemon's progress (packing) and the
 * download's bytes show in one bar. The registry of where the VM's data went records a client copy without a path:
 * a browser does not say where it saves.
 */
import { useEffect, useRef, useState } from "react";
import { download, errorText, newRequestId, saveAs } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { ProgressBar, useProgress, type ProgressState } from "../../components/Progress.tsx";
import { DialogActions, ErrorLine } from "../../components/ErrorLine.tsx";

export function ExportDialog({ vm, onClose }: { vm: Vm; onClose: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [withSnapshots, setWithSnapshots] = useState(false);
  const [memory, setMemory] = useState(false);
  const [validUntil, setValidUntil] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [requestId, setRequestId] = useState<string | null>(null);
  const [received, setReceived] = useState<ProgressState | null>(null);
  const packing = useProgress(requestId);
  useEffect(() => dialog.current?.showModal(), []);
  const live = vm.state === "running" || vm.state === "paused";
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="export-title" onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          const id = newRequestId();
          setRequestId(id);
          setReceived(null);
          setError(null);
          const body = { withSnapshots, memory: live && memory, ...(validUntil ? { expiresAt: new Date(validUntil).toISOString() } : {}) };
          download(`/v1/vms/${vm.name}/export`, body, { requestId: id, onBytes: (done, total) => setReceived({ what: "download", current: done, total: total ?? 0 }) }).then(
            (blob) => {
              saveAs(blob, `${vm.name}.vigil`);
              dialog.current?.close();
            },
            (err: unknown) => {
              setRequestId(null);
              setError(errorText(err));
            },
          );
        }}
      >
        <h2 id="export-title">Export {vm.name}</h2>
        <p>One signed bundle: disks, identity, owner, lineage and audit proof. Importers verify it before they create anything.</p>
        <label className="check">
          <input type="checkbox" checked={withSnapshots} onChange={(e) => setWithSnapshots(e.target.checked)} /> Include its snapshots
        </label>
        {live && (
          <label className="check">
            <input type="checkbox" checked={memory} onChange={(e) => setMemory(e.target.checked)} /> Include its RAM (the import resumes where it was)
          </label>
        )}
        <label className="field">
          Refused by importers after (optional)
          <input type="datetime-local" value={validUntil} onChange={(e) => setValidUntil(e.target.value)} />
        </label>
        {requestId && <ProgressBar p={received ?? packing} label="Export" />}
        <ErrorLine error={error} />
        <DialogActions onCancel={() => dialog.current?.close()} submit="Export" busy={requestId !== null && "Exporting…"} />
      </form>
    </dialog>
  );
}
