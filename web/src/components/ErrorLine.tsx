/** An error as the API worded it, announced to screen readers; nothing when there is none. */
export function ErrorLine({ error }: { error: string | null }) {
  return error ? (
    <p className="error" role="alert">
      {error}
    </p>
  ) : null;
}

/** A dialog's footer: Cancel closes it, the submit button does the work. */
export function DialogActions({ onCancel, submit, busy, disabled, danger }: { onCancel: () => void; submit: string; busy?: string | false; disabled?: boolean; danger?: boolean }) {
  return (
    <div className="dialog-actions">
      <button type="button" onClick={onCancel}>
        Cancel
      </button>
      <button type="submit" className={danger ? "danger" : "primary"} disabled={disabled || !!busy}>
        {busy || submit}
      </button>
    </div>
  );
}
