/** Users and groups (user.read); adding a user (user.manage) shows its first token once. */
import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "../lib/api.ts";
import { may } from "../lib/permissions.ts";
import { useSession } from "../session.tsx";
import { when } from "../lib/format.ts";
import { TokensSection } from "./TokensSection.tsx";
import { ErrorLine } from "../components/ErrorLine.tsx";
import { TableHead } from "../components/AuditTable.tsx";

interface User {
  name: string;
  roles: string[];
  introspect: boolean;
  disabled: boolean;
  groups: string[];
  createdAt: string;
  createdBy: string;
}

const ROLES = ["admin", "operator", "owner", "auditor"];

export function UsersPage() {
  const { session } = useSession();
  const [users, setUsers] = useState<User[]>([]);
  const [groups, setGroups] = useState<{ name: string; members: string[] }[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [name, setName] = useState("");
  const [role, setRole] = useState("owner");
  const [token, setToken] = useState<{ name: string; token: string } | null>(null);
  const [tokensOf, setTokensOf] = useState<string | null>(null);
  const load = useCallback(() => {
    api<{ users: User[] }>("GET", "/v1/users").then((r) => setUsers(r.users), (err: unknown) => setError(errorText(err)));
    api<{ groups: { name: string; members: string[] }[] }>("GET", "/v1/groups").then((r) => setGroups(r.groups), () => undefined);
  }, []);
  useEffect(load, [load]);
  return (
    <main className="page">
      <h1>Users</h1>
      <ErrorLine error={error} />
      {may(session, "user.manage") && (
        <form
          className="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            api<{ token: string }>("POST", "/v1/users", { body: { name, roles: [role] } }).then(
              (r) => {
                setToken({ name, token: r.token });
                setName("");
                load();
              },
              (err: unknown) => setError(errorText(err)),
            );
          }}
        >
          <label className="field">
            New user
            <input value={name} onChange={(e) => setName(e.target.value)} required />
          </label>
          <label className="field">
            Role
            <select value={role} onChange={(e) => setRole(e.target.value)}>
              {ROLES.map((r) => (
                <option key={r}>{r}</option>
              ))}
            </select>
          </label>
          <button type="submit" className="primary">
            Add user
          </button>
        </form>
      )}
      {token && (
        <p className="ok" role="status">
          Token for {token.name} (shown once; give it to them over a safe channel): <code>{token.token}</code>
        </p>
      )}
      <table className="table">
        <TableHead columns={["name", "roles", "groups", "introspect", "state", "created", ""]} />
        <tbody>
          {users.map((u) => (
            <tr key={u.name}>
              <td>{u.name}</td>
              <td>{u.roles.join(", ")}</td>
              <td>{u.groups.join(", ")}</td>
              <td>{u.introspect ? "yes" : "no"}</td>
              <td>{u.disabled ? "disabled" : "active"}</td>
              <td>
                {when(u.createdAt)} by {u.createdBy}
              </td>
              <td>
                <button type="button" onClick={() => setTokensOf(u.name)}>
                  Tokens
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {tokensOf && <TokensSection key={tokensOf} user={tokensOf} canManage={may(session, "user.manage") || tokensOf === session?.user.name} />}
      <h2>Groups</h2>
      <ul>
        {groups.map((g) => (
          <li key={g.name}>
            <strong>{g.name}</strong>: {g.members.join(", ") || "no members"}
          </li>
        ))}
      </ul>
    </main>
  );
}
