/**
 * Rollback-safe time and the security floor (docs/vtime.md): the VM's monotonic store — its namespace (shared
 * with a linked VM), counters and append-only streams, and any problems found with them — and the floor's facts,
 * the versions below which a revert or an import is refused. With vm.modify: raise a fact (`vigil vm floor NAME
 * KEY=VALUE`; lowering one needs force and a reason, as in the CLI) and link the store to another VM's
 * (`vigil vtime link`).
 */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { when } from "../../lib/format.ts";
import { ErrorLine } from "../../components/ErrorLine.tsx";
import { TableHead } from "../../components/AuditTable.tsx";

interface Store {
  namespace: string;
  floor: Record<string, string>;
  counters: { name: string; value: number; updatedAt: string }[];
  streams: { stream: string; records: number }[];
  problems: string[];
}

export function TimeTab({ vm, canModify }: { vm: Vm; canModify: boolean }) {
  const [store, setStore] = useState<Store | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [fact, setFact] = useState({ key: "", value: "", force: false, reason: "" });
  const [source, setSource] = useState("");
  const load = useCallback(() => {
    api<Store>("GET", `/v1/vms/${vm.name}/vtime`).then(setStore, (err: unknown) => setError(errorText(err)));
  }, [vm.name]);
  useEffect(load, [load]);
  const done = (p: Promise<unknown>) => p.then(() => (setError(null), load()), (err: unknown) => setError(errorText(err)));
  if (!store) return error ? <ErrorLine error={error} /> : <p>Loading…</p>;
  return (
    <div>
      <ErrorLine error={error} />
      {store.problems.length > 0 && (
        <ul className="error">
          {store.problems.map((p) => (
            <li key={p}>{p}</li>
          ))}
        </ul>
      )}
      <h3>Security floor</h3>
      <table className="table" aria-label="Security floor">
        <TableHead columns={["fact", "at least"]} />
        <tbody>
          {Object.entries(store.floor).map(([k, v]) => (
            <tr key={k} data-testid={`floor-${k}`}>
              <td>{k}</td>
              <td>{v}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {Object.keys(store.floor).length === 0 && <p>No facts: no revert or import is refused for being too old.</p>}
      {canModify && (
        <form
          className="inline-form"
          aria-label="Raise a fact of the floor"
          onSubmit={(e) => {
            e.preventDefault();
            void done(api("PUT", `/v1/vms/${vm.name}/floor`, { body: { facts: { [fact.key]: fact.value }, force: fact.force, ...(fact.reason ? { reason: fact.reason } : {}) } }));
          }}
        >
          <label className="field">
            Fact
            <input value={fact.key} onChange={(e) => setFact({ ...fact, key: e.target.value })} required maxLength={64} placeholder="kernel" />
          </label>
          <label className="field">
            Version
            <input value={fact.value} onChange={(e) => setFact({ ...fact, value: e.target.value })} required maxLength={128} placeholder="6.1.0-28" />
          </label>
          <label className="check">
            <input type="checkbox" checked={fact.force} onChange={(e) => setFact({ ...fact, force: e.target.checked })} /> Lower it (force)
          </label>
          {fact.force && (
            <label className="field">
              Reason (required to lower)
              <input value={fact.reason} onChange={(e) => setFact({ ...fact, reason: e.target.value })} required maxLength={500} />
            </label>
          )}
          <button type="submit" className="primary">
            Set
          </button>
        </form>
      )}
      <h3>Monotonic store</h3>
      <p>
        Namespace <code>{store.namespace}</code>
        {store.namespace !== vm.id ? " (shared with another VM)" : ""}
      </p>
      <table className="table" aria-label="Counters">
        <TableHead columns={["counter", "value", "updated"]} />
        <tbody>
          {store.counters.map((c) => (
            <tr key={c.name}>
              <td>{c.name}</td>
              <td>{c.value}</td>
              <td>{when(c.updatedAt)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <p>Streams: {store.streams.map((s) => `${s.stream} (${s.records} records)`).join(", ") || "none"}</p>
      {canModify && (
        <form
          className="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void done(api("POST", `/v1/vms/${vm.name}/vtime/link`, { body: { source } }));
          }}
        >
          <label className="field">
            Share the store of VM
            <input value={source} onChange={(e) => setSource(e.target.value)} required pattern="[a-z][a-z0-9-]{0,62}" />
          </label>
          <button type="submit">Link</button>
        </form>
      )}
    </div>
  );
}
