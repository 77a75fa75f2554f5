/** A user's tokens (never their secrets): issue one (shown once), revoke one and every token minted with it. */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../lib/api.ts";
import { when } from "../lib/format.ts";
import { ErrorLine } from "../components/ErrorLine.tsx";
import { TableHead } from "../components/AuditTable.tsx";

interface TokenInfo {
  id: string;
  name: string;
  createdAt: string;
  expiresAt: string | null;
  lastUsedAt: string | null;
  revoked: boolean;
}

export function TokensSection({ user, canManage }: { user: string; canManage: boolean }) {
  const [tokens, setTokens] = useState<TokenInfo[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [name, setName] = useState("web");
  const [issued, setIssued] = useState<string | null>(null);
  const load = useCallback(() => {
    api<{ tokens: TokenInfo[] }>("GET", `/v1/users/${user}/tokens`).then((r) => setTokens(r.tokens), (err: unknown) => setError(errorText(err)));
  }, [user]);
  useEffect(load, [load]);
  return (
    <section aria-labelledby={`tokens-${user}`}>
      <h2 id={`tokens-${user}`}>Tokens of {user}</h2>
      <ErrorLine error={error} />
      {canManage && (
        <form
          className="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            api<{ token: string }>("POST", `/v1/users/${user}/tokens`, { body: { name } }).then(
              (r) => {
                setIssued(r.token);
                load();
              },
              (err: unknown) => setError(errorText(err)),
            );
          }}
        >
          <label className="field">
            Token name
            <input value={name} onChange={(e) => setName(e.target.value)} required />
          </label>
          <button type="submit">Issue token</button>
        </form>
      )}
      {issued && (
        <p className="ok" role="status">
          New token (shown once): <code>{issued}</code>
        </p>
      )}
      <table className="table">
        <TableHead columns={["name", "id", "created", "expires", "last used", ""]} />
        <tbody>
          {tokens.map((t) => (
            <tr key={t.id}>
              <td>{t.name}</td>
              <td>
                <code>{t.id}</code>
              </td>
              <td>{when(t.createdAt)}</td>
              <td>{t.expiresAt ? when(t.expiresAt) : "never"}</td>
              <td>{when(t.lastUsedAt)}</td>
              <td>
                {t.revoked ? (
                  <span className="badge">revoked</span>
                ) : (
                  canManage && (
                    <button type="button" className="danger" onClick={() => void api("DELETE", `/v1/users/${user}/tokens/${t.id}`).then(load, (err: unknown) => setError(errorText(err)))}>
                      Revoke
                    </button>
                  )
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
