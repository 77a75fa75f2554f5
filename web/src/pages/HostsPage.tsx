/**
 * The cluster's hosts (on the cluster manager, `vigil host list`): each host's state, address, last heartbeat, CPUs,
 * memory, load, VMs and vigil version; and the migrations running now with their phase and RAM progress
 * (`vigil migration list`). Refreshed every 2 s; hosts need host.read, migrations show those of VMs one may read.
 */
import { useEffect, useState } from "react";
import { api, errorText } from "../lib/api.ts";
import { may } from "../lib/permissions.ts";
import { navigate } from "../lib/router.ts";
import { useSession } from "../session.tsx";
import { bytes, relative } from "../lib/format.ts";
import type { ClusterHost, Migration } from "../lib/types.ts";
import { ErrorLine } from "../components/ErrorLine.tsx";
import { TableHead } from "../components/AuditTable.tsx";

/** "42% (100 MiB of 240 MiB)" of a migration's RAM copy, or its phase alone before QEMU reports. */
export function migrationProgress(m: Pick<Migration, "phase" | "progress">): string {
  const p = m.progress;
  if (!p || p.ramTotal <= 0) return m.phase;
  const pct = Math.min(100, Math.round((p.ramTransferred / p.ramTotal) * 100));
  return `${m.phase}: ${pct}% of RAM (${bytes(p.ramTransferred)} of ${bytes(p.ramTotal)})`;
}

export function HostsPage() {
  const { session } = useSession();
  const [hosts, setHosts] = useState<ClusterHost[] | null>(null);
  const [migrations, setMigrations] = useState<Migration[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const load = () => {
      if (may(session, "host.read")) api<ClusterHost[]>("GET", "/v1/hosts").then(setHosts, (err: unknown) => setError(errorText(err)));
      api<Migration[]>("GET", "/v1/migrations").then(setMigrations, () => setMigrations([]));
    };
    load();
    const timer = setInterval(load, 2000);
    return () => clearInterval(timer);
  }, [session]);
  return (
    <main className="page">
      <h1>Hosts</h1>
      <ErrorLine error={error} />
      {hosts === null ? (
        may(session, "host.read") ? <p>Loading…</p> : <p>Listing hosts needs host.read.</p>
      ) : hosts.length === 0 ? (
        <p>No hosts yet: add one with <code>vigil host add NAME ADDRESS</code>.</p>
      ) : (
        <table className="table" aria-label="Hosts">
          <TableHead columns={["host", "state", "address", "last heartbeat", "CPUs", "memory free", "load", "VMs", "vigil"]} />
          <tbody>
            {hosts.map((h) => (
              <tr key={h.name} data-testid={`host-${h.name}`}>
                <td>
                  <a
                    href={`/?host=${encodeURIComponent(h.name)}`}
                    onClick={(e) => {
                      e.preventDefault();
                      navigate({ page: "inventory", host: h.name });
                    }}
                  >
                    {h.name}
                  </a>
                </td>
                <td>
                  <span className={`badge ${h.state === "ready" ? "" : "alarm"}`}>{h.state}</span>
                </td>
                <td>
                  <code>{h.address}</code>
                </td>
                <td>{h.lastSeen ? relative(h.lastSeen) : "never"}</td>
                <td>{h.status?.cpus ?? "—"}</td>
                <td>{h.status ? `${bytes(h.status.memFreeMiB * 1024 * 1024)} of ${bytes(h.status.memTotalMiB * 1024 * 1024)}` : "—"}</td>
                <td>{h.status ? h.status.load1.toFixed(2) : "—"}</td>
                <td>{h.status?.vms.length ?? "—"}</td>
                <td>{h.status?.version ?? "—"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h2>Migrations running now</h2>
      {migrations.length === 0 ? (
        <p>None.</p>
      ) : (
        <table className="table" aria-label="Migrations">
          <TableHead columns={["VM", "from", "to", "progress", "requested by", "started"]} />
          <tbody>
            {migrations.map((m) => (
              <tr key={m.id}>
                <td>{m.vmName}</td>
                <td>{m.source}</td>
                <td>{m.target}</td>
                <td>{migrationProgress(m)}</td>
                <td>{m.requestedBy}</td>
                <td>{relative(m.startedAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </main>
  );
}
