/**
 * Import a .vigil bundle the user picks (`vigil vm import FILE`): the browser streams the file as the request
 * body; the daemon verifies signature, proof and every byte before it creates anything, and its progress
 * ("receive") shows in the bar. A refusal (an untrusted signer, a replayed bundle, a name in use) is its message;
 * a bundle this site imported before needs the box ticked (`--allow-replay`). On the cluster manager the user may
 * pick the host (`--host`); left at "placement" the manager picks, as for a new VM.
 */
import { useEffect, useRef, useState } from "react";
import { errorText, newRequestId, upload } from "../lib/api.ts";
import type { Vm } from "../lib/types.ts";
import { ProgressBar, useProgress } from "../components/Progress.tsx";
import { DialogActions, ErrorLine } from "../components/ErrorLine.tsx";

export function ImportBundleDialog({ onClose, onImported, hosts }: { onClose: () => void; onImported: (name: string) => void; hosts?: string[] }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [file, setFile] = useState<File | null>(null);
  const [name, setName] = useState("");
  const [purpose, setPurpose] = useState("");
  const [allowReplay, setAllowReplay] = useState(false);
  const [host, setHost] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [requestId, setRequestId] = useState<string | null>(null);
  const progress = useProgress(requestId);
  useEffect(() => dialog.current?.showModal(), []);
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="import-title" onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (!file) return;
          const id = newRequestId();
          setRequestId(id);
          setError(null);
          const query = new URLSearchParams({ source: `browser upload ${file.name}`.slice(0, 1024) });
          if (name) query.set("name", name);
          if (purpose) query.set("purpose", purpose);
          if (allowReplay) query.set("allowReplay", "true");
          if (host) query.set("host", host);
          upload<Vm>(`/v1/vms/import?${query}`, file, "application/x-vigil-bundle", { requestId: id }).then(
            (vm) => onImported(vm.name),
            (err: unknown) => {
              setRequestId(null);
              setError(errorText(err));
            },
          );
        }}
      >
        <h2 id="import-title">Import a bundle</h2>
        <label className="field">
          Bundle file (.vigil)
          <input type="file" accept=".vigil,application/x-vigil-bundle" required onChange={(e) => setFile(e.target.files?.[0] ?? null)} />
        </label>
        <label className="field">
          Name (default: the name in the bundle)
          <input value={name} onChange={(e) => setName(e.target.value)} pattern="[a-z][a-z0-9-]{0,62}" title="lower-case letters, digits and -, starting with a letter" />
        </label>
        <label className="field">
          Purpose (default: the bundle's)
          <input value={purpose} onChange={(e) => setPurpose(e.target.value)} maxLength={200} />
        </label>
        {hosts && (
          <label className="field">
            Host
            <select value={host} onChange={(e) => setHost(e.target.value)}>
              <option value="">where placement puts it</option>
              {hosts.map((h) => (
                <option key={h} value={h}>
                  {h}
                </option>
              ))}
            </select>
          </label>
        )}
        <label className="check">
          <input type="checkbox" checked={allowReplay} onChange={(e) => setAllowReplay(e.target.checked)} /> Import it even if this site imported it before (brings that state back)
        </label>
        {requestId && <ProgressBar p={progress} label="Import" />}
        <ErrorLine error={error} />
        <DialogActions onCancel={() => dialog.current?.close()} submit="Import" busy={requestId !== null && "Verifying and importing…"} disabled={!file} />
      </form>
    </dialog>
  );
}
