/**
 * A VM's bridged NICs on the Network tab: per-NIC counters from the switch (`vigil net counters VM`), the port
 * forwards from a host loopback address to a guest port (`vigil net forward`; 127.0.0.0/8 only, persisted), which
 * network.manage may add and remove, and traffic captures (`vigil net mirror VM --duration S`): network.manage
 * mirrors one NIC to a pcap for a few seconds (the request answers when the window is over) and downloads it
 * (audited net.capture.download). A VM with user-mode networking only has none of these.
 */
import { useCallback, useEffect, useState } from "react";
import { api, download, errorText, saveAs } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { bytes } from "../../lib/format.ts";
import { ErrorLine } from "../../components/ErrorLine.tsx";
import { TableHead } from "../../components/AuditTable.tsx";

interface Direction {
  bytes: number;
  packets: number;
  errors: number;
  dropped: number;
}
interface Counters {
  nic: string;
  network: string;
  ip: string;
  rx: Direction;
  tx: Direction;
}
interface Capture {
  id: string;
  vm: string;
  nic: string;
  bytes: number;
  packets: number;
  stoppedBy: string;
  startedAt: string;
  stoppedAt: string | null;
}
interface Forward {
  id: string;
  vm: string;
  nic: string;
  guestIp: string;
  guestPort: number;
  listen: string;
  open?: boolean;
}

export function NicTraffic({ vm, canManage }: { vm: Vm; canManage: boolean }) {
  const [counters, setCounters] = useState<Counters[]>([]);
  const [forwards, setForwards] = useState<Forward[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [f, setF] = useState({ guestPort: 80, listen: "127.0.0.1:8080" });
  const [captures, setCaptures] = useState<Capture[]>([]);
  const [mirror, setMirror] = useState({ nic: vm.nics[0]?.name ?? "", seconds: 5 });
  const [capturing, setCapturing] = useState(false);
  const load = useCallback(() => {
    if (vm.state === "running") api<Counters[]>("GET", `/v1/vms/${vm.name}/net/counters`).then(setCounters, () => setCounters([]));
    api<Forward[]>("GET", "/v1/net/forwards").then((all) => setForwards(all.filter((x) => x.vm === vm.name)), () => setForwards([]));
    api<Capture[]>("GET", "/v1/captures").then((all) => setCaptures(all.filter((x) => x.vm === vm.name)), () => setCaptures([]));
  }, [vm.name, vm.state]);
  useEffect(load, [load]);
  const done = (p: Promise<unknown>) => p.then(() => (setError(null), load()), (err: unknown) => setError(errorText(err)));
  return (
    <section>
      <h3>Traffic and port forwards</h3>
      <ErrorLine error={error} />
      {counters.length > 0 && (
        <table className="table" aria-label="NIC counters">
          <TableHead columns={["NIC", "network", "address", "sent", "received", "errors", "dropped"]} />
          <tbody>
            {counters.map((c) => (
              <tr key={c.nic}>
                <td>{c.nic}</td>
                <td>{c.network}</td>
                <td>{c.ip}</td>
                <td>
                  {bytes(c.rx.bytes)} ({c.rx.packets} packets)
                </td>
                <td>
                  {bytes(c.tx.bytes)} ({c.tx.packets} packets)
                </td>
                <td>{c.rx.errors + c.tx.errors}</td>
                <td>{c.rx.dropped + c.tx.dropped}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {forwards.length === 0 ? (
        <p>No port forwards.</p>
      ) : (
        <ul>
          {forwards.map((x) => (
            <li key={x.id} data-testid={`forward-${x.listen}`}>
              <code>{x.listen}</code> → {x.guestIp}:{x.guestPort} on {x.nic} {x.open === false ? "(not listening)" : ""}
              {canManage && (
                <button type="button" className="danger" onClick={() => void done(api("DELETE", `/v1/net/forwards/${x.id}`))}>
                  Remove
                </button>
              )}
            </li>
          ))}
        </ul>
      )}
      <h4>Captures</h4>
      {captures.length === 0 ? (
        <p>No captures.</p>
      ) : (
        <table className="table" aria-label="Captures">
          <TableHead columns={["NIC", "started", "packets", "size", "ended by", ""]} />
          <tbody>
            {captures.map((c) => (
              <tr key={c.id} data-testid={`capture-${c.id}`}>
                <td>{c.nic}</td>
                <td>{c.startedAt}</td>
                <td>{c.packets}</td>
                <td>{bytes(c.bytes)}</td>
                <td>{c.stoppedAt ? c.stoppedBy : "capturing"}</td>
                <td>
                  {canManage && c.stoppedAt && (
                    <button type="button" onClick={() => void download(`/v1/captures/${c.id}`, null).then((pcap) => saveAs(pcap, `${vm.name}-${c.nic}-${c.id.slice(0, 8)}.pcap`), (err: unknown) => setError(errorText(err)))}>
                      Download pcap
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {canManage && vm.state === "running" && vm.nics.length > 0 && (
        <form
          className="inline-form"
          aria-label="Capture traffic"
          onSubmit={(e) => {
            e.preventDefault();
            setCapturing(true);
            void done(api("POST", `/v1/vms/${vm.name}/net/mirror`, { body: { nic: mirror.nic, durationMs: mirror.seconds * 1000 } })).finally(() => setCapturing(false));
          }}
        >
          <label className="field">
            NIC
            <select value={mirror.nic} onChange={(e) => setMirror({ ...mirror, nic: e.target.value })}>
              {vm.nics.map((n) => (
                <option key={n.name} value={n.name}>
                  {n.name} ({n.network})
                </option>
              ))}
            </select>
          </label>
          <label className="field">
            Seconds
            <input type="number" min={1} max={300} value={mirror.seconds} onChange={(e) => setMirror({ ...mirror, seconds: Number(e.target.value) })} />
          </label>
          <button type="submit" disabled={capturing}>
            {capturing ? `Capturing for ${mirror.seconds} s…` : "Capture traffic"}
          </button>
        </form>
      )}
      {canManage && vm.nics.length > 0 && (
        <form
          className="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void done(api("POST", `/v1/vms/${vm.name}/net/forwards`, { body: { guestPort: f.guestPort, listen: f.listen } }));
          }}
        >
          <label className="field">
            Host address (127.0.0.0/8)
            <input value={f.listen} onChange={(e) => setF({ ...f, listen: e.target.value })} required maxLength={32} />
          </label>
          <label className="field">
            Guest port
            <input type="number" min={1} max={65535} value={f.guestPort} onChange={(e) => setF({ ...f, guestPort: Number(e.target.value) })} />
          </label>
          <button type="submit">Add forward</button>
        </form>
      )}
    </section>
  );
}
