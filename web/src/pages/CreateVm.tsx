/** Create a VM from an image: the fields of `vigil vm create`, with the API's error naming the field. */
import { useEffect, useRef, useState } from "react";
import { api, errorText } from "../lib/api.ts";
import type { Image, Vm } from "../lib/types.ts";
import { DialogActions, ErrorLine } from "../components/ErrorLine.tsx";

export function CreateVmDialog({ images, onClose, onCreated, requestId }: { images: Image[]; onClose: () => void; onCreated: (name: string) => void; requestId: () => string }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [f, setF] = useState({ name: "", image: images[0]?.name ?? "tiny", memoryMiB: 256, vcpus: 1, purpose: "", expiresAt: "", owner: "" });
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => dialog.current?.showModal(), []);
  const set = (k: keyof typeof f) => (e: { target: { value: string } }) => setF({ ...f, [k]: k === "memoryMiB" || k === "vcpus" ? Number(e.target.value) : e.target.value });
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="create-title" onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setBusy(true);
          setError(null);
          const body: Record<string, unknown> = { name: f.name, image: f.image, memoryMiB: f.memoryMiB, vcpus: f.vcpus };
          if (f.purpose) body.purpose = f.purpose;
          if (f.expiresAt) body.expiresAt = f.expiresAt;
          if (f.owner) body.owner = f.owner;
          api<Vm>("POST", "/v1/vms", { body, requestId: requestId() }).then(
            (vm) => onCreated(vm.name),
            (err: unknown) => {
              setBusy(false);
              setError(errorText(err));
            },
          );
        }}
      >
        <h2 id="create-title">Create a VM</h2>
        <label className="field">
          Name
          <input name="name" value={f.name} onChange={set("name")} required pattern="[a-z][a-z0-9-]{0,62}" title="lower-case letters, digits and -, starting with a letter" autoFocus />
        </label>
        <label className="field">
          Image
          <select name="image" value={f.image} onChange={set("image")}>
            {(images.length ? images : [{ name: "tiny" } as Image]).map((i) => (
              <option key={i.name}>{i.name}</option>
            ))}
          </select>
        </label>
        <div className="field-row">
          <label className="field">
            Memory (MiB)
            <input name="memoryMiB" type="number" min={64} value={f.memoryMiB} onChange={set("memoryMiB")} />
          </label>
          <label className="field">
            vCPUs
            <input name="vcpus" type="number" min={1} max={64} value={f.vcpus} onChange={set("vcpus")} />
          </label>
        </div>
        <label className="field">
          Purpose
          <input name="purpose" value={f.purpose} onChange={set("purpose")} maxLength={500} />
        </label>
        <div className="field-row">
          <label className="field">
            Expires (date)
            <input name="expiresAt" type="date" value={f.expiresAt} onChange={set("expiresAt")} />
          </label>
          <label className="field">
            Owner (user:NAME or group:NAME; default you)
            <input name="owner" value={f.owner} onChange={set("owner")} />
          </label>
        </div>
        <ErrorLine error={error} />
        <DialogActions onCancel={() => dialog.current?.close()} submit="Create" busy={busy && "Creating…"} />
      </form>
    </dialog>
  );
}
