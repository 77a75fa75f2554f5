/**
 * The confirmations the CLI asks for, as a modal dialog: what will happen, and for the irreversible ones the VM's
 * name typed again (as `vigil vm purge` asks for --yes). Escape or Cancel backs out.
 */
import { useEffect, useRef, useState, type ReactNode } from "react";
import { DialogActions, ErrorLine } from "./ErrorLine.tsx";

export interface ConfirmRequest {
  title: string;
  body: ReactNode;
  action: string;
  danger?: boolean;
  /** When set, the user must type this to confirm. */
  typeToConfirm?: string;
  /**
   * An override the CLI offers as a flag (revert's --force below the security floor): a checkbox with this label,
   * and when it is ticked a reason, which the audit log records.
   */
  force?: string;
  /** A reason is always asked for (quarantine's): the audit log records it. */
  reasonRequired?: boolean;
  run: (o: { force: boolean; reason: string }) => Promise<void>;
}

export function ConfirmDialog({ req, onClose }: { req: ConfirmRequest; onClose: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [typed, setTyped] = useState("");
  const [reason, setReason] = useState("");
  const [force, setForce] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    dialog.current?.showModal();
  }, []);
  const ok = (!req.typeToConfirm || typed === req.typeToConfirm) && (!(force || req.reasonRequired) || reason.trim() !== "");
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="confirm-title" onClose={onClose} onCancel={onClose}>
      <form
        method="dialog"
        onSubmit={(e) => {
          e.preventDefault();
          if (!ok || busy) return;
          setBusy(true);
          setError(null);
          req.run({ force, reason: reason.trim() }).then(
            () => dialog.current?.close(),
            (err: unknown) => {
              setBusy(false);
              setError(err instanceof Error ? err.message : String(err));
            },
          );
        }}
      >
        <h2 id="confirm-title">{req.title}</h2>
        <div className="dialog-body">{req.body}</div>
        {req.force && (
          <label className="check">
            <input type="checkbox" checked={force} onChange={(e) => setForce(e.target.checked)} /> {req.force}
          </label>
        )}
        {(force || req.reasonRequired) && (
          <label className="field">
            Reason (required; recorded in the audit log)
            <input value={reason} onChange={(e) => setReason(e.target.value)} maxLength={500} required />
          </label>
        )}
        {req.typeToConfirm && (
          <label className="field">
            Type <code>{req.typeToConfirm}</code> to confirm
            <input value={typed} onChange={(e) => setTyped(e.target.value)} autoFocus />
          </label>
        )}
        <ErrorLine error={error} />
        <DialogActions onCancel={() => dialog.current?.close()} submit={req.action} busy={busy && "Working…"} disabled={!ok} danger={req.danger ?? false} />
      </form>
    </dialog>
  );
}
