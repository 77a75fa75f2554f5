/** Clone a VM (linked on a template, or a full copy) with a fresh identity; a full copy shows its progress. */
import { useEffect, useRef, useState } from "react";
import { api, errorText, newRequestId } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { ProgressBar, useProgress } from "../../components/Progress.tsx";
import { DialogActions, ErrorLine } from "../../components/ErrorLine.tsx";

export function CloneDialog({ vm, onClose, onCloned }: { vm: Vm; onClose: () => void; onCloned: (name: string) => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [name, setName] = useState(`${vm.name}-clone`.slice(0, 63));
  const [mode, setMode] = useState<"full" | "linked">(vm.template ? "linked" : "full");
  const [error, setError] = useState<string | null>(null);
  const [requestId, setRequestId] = useState<string | null>(null);
  const progress = useProgress(requestId);
  useEffect(() => dialog.current?.showModal(), []);
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="clone-title" onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          const id = newRequestId();
          setRequestId(id);
          setError(null);
          api<Vm>("POST", `/v1/vms/${vm.name}/clone`, { body: { name, mode }, requestId: id }).then(
            (c) => onCloned(c.name),
            (err: unknown) => {
              setRequestId(null);
              setError(errorText(err));
            },
          );
        }}
      >
        <h2 id="clone-title">Clone {vm.name}</h2>
        <label className="field">
          Name of the clone
          <input value={name} onChange={(e) => setName(e.target.value)} required pattern="[a-z][a-z0-9-]{0,62}" />
        </label>
        <label className="field">
          Mode
          <select value={mode} onChange={(e) => setMode(e.target.value as "full" | "linked")}>
            <option value="full">full: an independent copy of the disks</option>
            <option value="linked">linked: an overlay on a template</option>
          </select>
        </label>
        {requestId && <ProgressBar p={progress} label="Clone" />}
        <ErrorLine error={error} />
        <DialogActions onCancel={() => dialog.current?.close()} submit="Clone" busy={requestId !== null && "Cloning…"} />
      </form>
    </dialog>
  );
}
