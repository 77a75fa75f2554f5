import { useState } from "react";
import type { Vm } from "../../lib/types.ts";
import { when } from "../../lib/format.ts";
import { api, errorText } from "../../lib/api.ts";

/** `vigil vm showcmd`: the exact QEMU command line, fetched when the section is opened. */
function QemuCommand({ name }: { name: string }) {
  const [text, setText] = useState<string | null>(null);
  return (
    <details
      onToggle={(e) => {
        if ((e.target as HTMLDetailsElement).open && text === null) {
          api<{ binary: string; argv: string[] }>("GET", `/v1/vms/${name}/qemu-command`).then(
            (c) => setText([c.binary, ...c.argv].join(" \\\n  ")),
            (err: unknown) => setText(errorText(err)),
          );
        }
      }}
    >
      <summary>QEMU command line</summary>
      <pre className="json">{text ?? "Loading…"}</pre>
    </details>
  );
}

function Row({ k, v }: { k: string; v: React.ReactNode }) {
  return (
    <>
      <dt>{k}</dt>
      <dd>{v}</dd>
    </>
  );
}

export function SummaryTab({ vm }: { vm: Vm }) {
  const confinement = (vm as { confinement?: unknown }).confinement;
  return (
    <div className="summary">
      <section>
        <h2>Machine</h2>
        <dl>
          <Row k="State" v={`${vm.state} since ${when(vm.stateChangedAt)}`} />
          <Row k="Host" v={vm.host} />
          <Row k="Accelerator" v={vm.accelerator ?? "—"} />
          <Row k="vCPUs" v={vm.spec.vcpus} />
          <Row k="Memory" v={`${vm.spec.memoryMiB} MiB`} />
          <Row k="Image" v={String(vm.spec.image ?? "—")} />
          <Row k="QEMU pid" v={vm.pid ?? "—"} />
          <Row k="NICs" v={vm.nics.length ? vm.nics.map((n) => `${n.name} ${n.mac} ${n.network}${n.ip ? ` ${n.ip}` : ""}`).join("; ") : "user-mode"} />
        </dl>
      </section>
      <section>
        <h2>Identity</h2>
        <dl>
          <Row k="vmgenid" v={<code>{vm.vmgenid}</code>} />
          <Row k="Generation" v={vm.generation} />
          <Row k="Id" v={<code>{vm.id}</code>} />
        </dl>
      </section>
      <section>
        <h2>Ownership</h2>
        <dl>
          <Row k="Owner" v={vm.owner} />
          <Row k="Approver" v={vm.approver ?? "—"} />
          <Row k="Purpose" v={vm.purpose ?? "—"} />
          <Row k="Expires" v={vm.expiresAt ? `${when(vm.expiresAt)}${vm.expired ? " (expired)" : ""}` : "never"} />
          <Row k="Created" v={`${when(vm.createdAt)} by ${vm.createdBy}`} />
          <Row k="Labels" v={Object.entries(vm.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "—"} />
        </dl>
      </section>
      <section>
        <h2>Confinement</h2>
        <pre className="json">{confinement ? JSON.stringify(confinement, null, 2) : "Each QEMU runs as its own uid in its own namespaces (docs/jail.md)."}</pre>
        <QemuCommand name={vm.name} />
      </section>
    </div>
  );
}
