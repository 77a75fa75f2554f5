/**
 * Start the stopped VM under QEMU record/replay (`vigil vm start NAME --record [--shadow] [--gate-output]`). The
 * dialog only collects the options: the VM page runs the start like its Start button, with its progress line and
 * the daemon's refusal (what QEMU cannot record, with the reason) in its error line.
 */
import { useEffect, useRef, useState } from "react";
import type { Vm } from "../../lib/types.ts";
import { DialogActions } from "../../components/ErrorLine.tsx";

export interface RecordOptions {
  wait: boolean;
  shadow: boolean;
  gateOutput: boolean;
}

export function RecordDialog({ vm, onClose, start }: { vm: Vm; onClose: () => void; start: (o: RecordOptions) => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [shadow, setShadow] = useState(false);
  const [gateOutput, setGateOutput] = useState(false);
  useEffect(() => dialog.current?.showModal(), []);
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="record-title" onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          start({ wait: true, shadow, gateOutput: shadow && gateOutput });
          dialog.current?.close();
        }}
      >
        <h2 id="record-title">Record {vm.name}</h2>
        <p>The VM starts under QEMU record/replay: every non-deterministic input is logged, so the run can be replayed exactly, verified and bisected. The guest runs slower while recorded.</p>
        <label className="check">
          <input type="checkbox" checked={shadow} onChange={(e) => setShadow(e.target.checked)} /> A shadow replica trails it and runs the IDS checks on its RAM
        </label>
        <label className="check">
          <input type="checkbox" checked={gateOutput} disabled={!shadow} onChange={(e) => setGateOutput(e.target.checked)} /> Show console output only once the shadow has checked it
        </label>
        <DialogActions onCancel={() => dialog.current?.close()} submit="Start recording" />
      </form>
    </dialog>
  );
}
