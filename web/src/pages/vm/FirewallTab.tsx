/** The VM's firewall policy and the rules installed for its NICs (network.read); changes stay with the CLI for now. */
import { useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { ErrorLine } from "../../components/ErrorLine.tsx";

export function FirewallTab({ vm }: { vm: Vm }) {
  const [fw, setFw] = useState<Record<string, unknown> | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    api<Record<string, unknown>>("GET", `/v1/vms/${vm.name}/firewall`).then(setFw, (err: unknown) => setError(errorText(err)));
  }, [vm.name]);
  if (error) return <ErrorLine error={error} />;
  if (!fw) return <p>Loading…</p>;
  return (
    <div>
      <p>
        NICs: {vm.nics.length ? vm.nics.map((n) => `${n.name} on ${n.network} (${n.mac}${n.ip ? `, ${n.ip}` : ""})`).join("; ") : "user-mode only"}
      </p>
      <pre className="json">{JSON.stringify(fw, null, 2)}</pre>
    </div>
  );
}
