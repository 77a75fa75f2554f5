/**
 * The confirmations the CLI asks for, as a modal dialog: what will happen, and for the irreversible ones the VM's
 * name typed again (as `vigil vm purge` asks for --yes). Escape or Cancel backs out.
 */
import { useEffect, useRef, useState, type ReactNode } from "react";

export interface ConfirmRequest {
  title: string;
  body: ReactNode;
  action: string;
  danger?: boolean;
  /** When set, the user must type this to confirm. */
  typeToConfirm?: string;
  /** A free-text reason, sent with the request (revert asks for one). */
  askReason?: boolean;
  run: (reason: string) => Promise<void>;
}

export function ConfirmDialog({ req, onClose }: { req: ConfirmRequest; onClose: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [typed, setTyped] = useState("");
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    dialog.current?.showModal();
  }, []);
  const ok = !req.typeToConfirm || typed === req.typeToConfirm;
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="confirm-title" onClose={onClose} onCancel={onClose}>
      <form
        method="dialog"
        onSubmit={(e) => {
          e.preventDefault();
          if (!ok || busy) return;
          setBusy(true);
          setError(null);
          req.run(reason).then(
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
        {req.askReason && (
          <label className="field">
            Reason (recorded in the audit log)
            <input value={reason} onChange={(e) => setReason(e.target.value)} maxLength={500} />
          </label>
        )}
        {req.typeToConfirm && (
          <label className="field">
            Type <code>{req.typeToConfirm}</code> to confirm
            <input value={typed} onChange={(e) => setTyped(e.target.value)} autoFocus />
          </label>
        )}
        {error && (
          <p className="error" role="alert">
            {error}
          </p>
        )}
        <div className="dialog-actions">
          <button type="button" onClick={() => dialog.current?.close()}>
            Cancel
          </button>
          <button type="submit" className={req.danger ? "danger" : "primary"} disabled={!ok || busy}>
            {busy ? "Working…" : req.action}
          </button>
        </div>
      </form>
    </dialog>
  );
}
