/**
 * Transfer the VM to another owner (`vigil vm chown NAME OWNER --approver WHO [--reason …]`): the approver and the
 * reason go into the audit log with the previous owner; the API refuses an unknown owner or approver by name.
 */
import { useEffect, useRef, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { DialogActions, ErrorLine } from "../../components/ErrorLine.tsx";

export function ChownDialog({ vm, onClose, onDone }: { vm: Vm; onClose: () => void; onDone: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [owner, setOwner] = useState("");
  const [approver, setApprover] = useState("");
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => dialog.current?.showModal(), []);
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="chown-title" onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setBusy(true);
          setError(null);
          api("POST", `/v1/vms/${vm.name}/chown`, { body: { owner, approver, ...(reason ? { reason } : {}) } }).then(
            () => {
              onDone();
              dialog.current?.close();
            },
            (err: unknown) => {
              setBusy(false);
              setError(errorText(err));
            },
          );
        }}
      >
        <h2 id="chown-title">Change the owner of {vm.name}</h2>
        <p>Now owned by {vm.owner}.</p>
        <label className="field">
          New owner
          <input value={owner} onChange={(e) => setOwner(e.target.value)} required pattern="(user|group):[a-z_][a-z0-9_.\-]{0,63}" placeholder="user:NAME or group:NAME" />
        </label>
        <label className="field">
          Approved by
          <input value={approver} onChange={(e) => setApprover(e.target.value)} required maxLength={64} />
        </label>
        <label className="field">
          Reason
          <input value={reason} onChange={(e) => setReason(e.target.value)} maxLength={500} />
        </label>
        <ErrorLine error={error} />
        <DialogActions onCancel={() => dialog.current?.close()} submit="Change owner" busy={busy && "Changing…"} />
      </form>
    </dialog>
  );
}
