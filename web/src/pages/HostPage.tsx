/** This host (host.read): name, accelerator and why, version, the audit log's health; the bundle trust keys. */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../lib/api.ts";
import { may } from "../lib/permissions.ts";
import { useSession } from "../session.tsx";
import { when } from "../lib/format.ts";
import { ErrorLine } from "../components/ErrorLine.tsx";
import { TableHead } from "../components/AuditTable.tsx";

interface Host {
  name: string;
  accelerator: string;
  accelReason: string;
  version: string;
  home: string;
  audit: Record<string, unknown>;
}
interface TrustedKey {
  keyId: string;
  name: string;
  publicKey: string;
  addedBy: string;
  addedAt: string;
  site: boolean;
}

export function HostPage() {
  const { session } = useSession();
  const [host, setHost] = useState<Host | null>(null);
  const [keys, setKeys] = useState<TrustedKey[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [name, setName] = useState("");
  const [pem, setPem] = useState("");
  const load = useCallback(() => {
    if (may(session, "host.read")) api<Host>("GET", "/v1/host").then(setHost, (err: unknown) => setError(errorText(err)));
    if (may(session, "image.read")) api<{ keys: TrustedKey[] }>("GET", "/v1/trust").then((r) => setKeys(r.keys), (err: unknown) => setError(errorText(err)));
  }, [session]);
  useEffect(load, [load]);
  return (
    <main className="page">
      <h1>Host and trust</h1>
      <ErrorLine error={error} />
      {host && (
        <dl>
          <dt>Host</dt>
          <dd>{host.name}</dd>
          <dt>Accelerator</dt>
          <dd>
            {host.accelerator} — {host.accelReason}
          </dd>
          <dt>vigil</dt>
          <dd>{host.version}</dd>
          <dt>Home</dt>
          <dd>
            <code>{host.home}</code>
          </dd>
          <dt>Audit log</dt>
          <dd>
            <pre className="json">{JSON.stringify(host.audit, null, 2)}</pre>
          </dd>
        </dl>
      )}
      <h2>Bundle-signing keys this site trusts</h2>
      <table className="table">
        <TableHead columns={["name", "key id", "added", ""]} />
        <tbody>
          {keys.map((k) => (
            <tr key={k.keyId}>
              <td>
                {k.name} {k.site && <span className="badge">this site</span>}
              </td>
              <td>
                <code>{k.keyId}</code>
              </td>
              <td>
                {when(k.addedAt)} by {k.addedBy}
              </td>
              <td>
                {!k.site && may(session, "trust.manage") && (
                  <button type="button" className="danger" onClick={() => void api("DELETE", `/v1/trust/${k.keyId}`).then(load, (err: unknown) => setError(errorText(err)))}>
                    Stop trusting
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {may(session, "trust.manage") && (
        <form
          className="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            api("POST", "/v1/trust", { body: { name, publicKey: pem } }).then(
              () => {
                setName("");
                setPem("");
                load();
              },
              (err: unknown) => setError(errorText(err)),
            );
          }}
        >
          <label className="field">
            Site name
            <input value={name} onChange={(e) => setName(e.target.value)} required />
          </label>
          <label className="field">
            Public key (PEM)
            <textarea value={pem} onChange={(e) => setPem(e.target.value)} rows={4} cols={50} required />
          </label>
          <button type="submit" className="primary">
            Trust key
          </button>
        </form>
      )}
    </main>
  );
}
