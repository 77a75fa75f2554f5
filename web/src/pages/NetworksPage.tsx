/**
 * The virtual networks (network.read; `vigil net list|show`): each network's range, gateway, bridge, DHCP, NAT,
 * whether it spans hosts, and the NICs plugged into it now (opened per network). With network.manage: create one
 * (`vigil net create NAME --cidr … [--no-dhcp] [--nat]`) and delete one (confirmed; the daemon refuses a network a
 * VM is attached to, with the reason).
 */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../lib/api.ts";
import { may } from "../lib/permissions.ts";
import { useSession } from "../session.tsx";
import { when } from "../lib/format.ts";
import { ErrorLine } from "../components/ErrorLine.tsx";
import { TableHead } from "../components/AuditTable.tsx";
import { ConfirmDialog, type ConfirmRequest } from "../components/Confirm.tsx";

interface Network {
  name: string;
  cidr: string;
  gateway: string;
  bridge: string;
  dhcp: boolean;
  nat?: boolean;
  createdAt: string;
  span?: { vni: number };
}
interface Detail extends Network {
  attached: { vmName: string; nic: string; mac: string; ip: string }[];
  dhcpRunning: boolean;
}

export function NetworksPage() {
  const { session } = useSession();
  const [nets, setNets] = useState<Network[] | null>(null);
  const [detail, setDetail] = useState<Detail | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [confirm, setConfirm] = useState<ConfirmRequest | null>(null);
  const [f, setF] = useState({ name: "", cidr: "10.77.0.0/24", dhcp: true, nat: false });
  const manage = may(session, "network.manage");
  const load = useCallback(() => {
    api<{ networks: Network[] }>("GET", "/v1/networks").then((r) => setNets(r.networks), (err: unknown) => setError(errorText(err)));
  }, []);
  useEffect(load, [load]);
  const show = (name: string) => api<Detail>("GET", `/v1/networks/${encodeURIComponent(name)}`).then(setDetail, (err: unknown) => setError(errorText(err)));
  return (
    <main className="page">
      <h1>Networks</h1>
      <ErrorLine error={error} />
      {manage && (
        <form
          className="inline-form"
          aria-label="Create a network"
          onSubmit={(e) => {
            e.preventDefault();
            api("POST", "/v1/networks", { body: f }).then(
              () => {
                setError(null);
                setF({ ...f, name: "" });
                load();
              },
              (err: unknown) => setError(errorText(err)),
            );
          }}
        >
          <label className="field">
            Network name
            <input value={f.name} onChange={(e) => setF({ ...f, name: e.target.value })} required maxLength={15} pattern="[a-z][a-z0-9-]{0,14}" />
          </label>
          <label className="field">
            Range (CIDR)
            <input value={f.cidr} onChange={(e) => setF({ ...f, cidr: e.target.value })} required maxLength={18} />
          </label>
          <label className="check">
            <input type="checkbox" checked={f.dhcp} onChange={(e) => setF({ ...f, dhcp: e.target.checked })} /> DHCP
          </label>
          <label className="check">
            <input type="checkbox" checked={f.nat} onChange={(e) => setF({ ...f, nat: e.target.checked })} /> NAT to the outside
          </label>
          <button type="submit" className="primary">
            Create network
          </button>
        </form>
      )}
      {nets === null ? (
        <p>Loading…</p>
      ) : nets.length === 0 ? (
        <p>No networks: VMs have user-mode networking only.</p>
      ) : (
        <table className="table" aria-label="Networks">
          <TableHead columns={["network", "range", "gateway", "bridge", "DHCP", "NAT", "spans hosts", "created", ""]} />
          <tbody>
            {nets.map((n) => (
              <tr key={n.name} data-testid={`net-${n.name}`}>
                <td>
                  <button type="button" className="linklike" onClick={() => void show(n.name)}>
                    {n.name}
                  </button>
                </td>
                <td>{n.cidr}</td>
                <td>{n.gateway}</td>
                <td>
                  <code>{n.bridge}</code>
                </td>
                <td>{n.dhcp ? "yes" : "no"}</td>
                <td>{n.nat ? "yes" : "no"}</td>
                <td>{n.span ? `VNI ${n.span.vni}` : "no"}</td>
                <td>{when(n.createdAt)}</td>
                <td>
                  {manage && (
                    <button
                      type="button"
                      className="danger"
                      onClick={() =>
                        setConfirm({
                          title: `Delete network ${n.name}?`,
                          body: "Its bridge, DHCP server and firewall chains go. A network a VM is attached to is refused.",
                          action: "Delete",
                          danger: true,
                          run: async () => {
                            await api("DELETE", `/v1/networks/${encodeURIComponent(n.name)}`);
                            setDetail(null);
                            load();
                          },
                        })
                      }
                    >
                      Delete
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {detail && (
        <section aria-label={`Network ${detail.name}`}>
          <h2>{detail.name}</h2>
          <p>DHCP server {detail.dhcp ? (detail.dhcpRunning ? "running" : "not running") : "off"}.</p>
          {detail.attached.length === 0 ? (
            <p>No NICs attached now.</p>
          ) : (
            <table className="table" aria-label="Attached NICs">
              <TableHead columns={["VM", "NIC", "MAC", "address"]} />
              <tbody>
                {detail.attached.map((a) => (
                  <tr key={`${a.vmName}/${a.nic}`}>
                    <td>{a.vmName}</td>
                    <td>{a.nic}</td>
                    <td>{a.mac}</td>
                    <td>{a.ip}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
      )}
      {confirm && <ConfirmDialog req={confirm} onClose={() => setConfirm(null)} />}
    </main>
  );
}
