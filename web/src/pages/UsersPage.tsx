/**
 * Users and groups (user.read). With user.manage: adding a user shows its first token once; a user's roles,
 * introspection grant and disabled flag are changed in place (`vigil user set`); groups are added and members
 * added or removed (`vigil group …`). The API decides each change and its audit record names the admin.
 */
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
  const manage = may(session, "user.manage");
  const [groupName, setGroupName] = useState("");
  const done = (p: Promise<unknown>) => p.then(() => (setError(null), load()), (err: unknown) => setError(errorText(err)));
  const change = (user: string, body: Record<string, unknown>) => void done(api("PATCH", `/v1/users/${encodeURIComponent(user)}`, { body }));
  const membership = (group: string, user: string, member: boolean) => void done(api(member ? "PUT" : "DELETE", `/v1/groups/${encodeURIComponent(group)}/members/${encodeURIComponent(user)}`));
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
            <tr key={u.name} data-testid={`user-${u.name}`}>
              <td>{u.name}</td>
              <td>
                {manage ? (
                  <select aria-label={`Role of ${u.name}`} value={u.roles[0] ?? ""} onChange={(e) => change(u.name, { roles: e.target.value ? [e.target.value] : [] })}>
                    <option value="">no role</option>
                    {ROLES.map((r) => (
                      <option key={r}>{r}</option>
                    ))}
                  </select>
                ) : (
                  u.roles.join(", ")
                )}
              </td>
              <td>{u.groups.join(", ")}</td>
              <td>{manage ? <input type="checkbox" aria-label={`Introspection grant of ${u.name}`} checked={u.introspect} onChange={(e) => change(u.name, { introspect: e.target.checked })} /> : u.introspect ? "yes" : "no"}</td>
              <td>
                {manage && u.name !== session?.user.name ? (
                  <button type="button" className={u.disabled ? "" : "danger"} onClick={() => change(u.name, { disabled: !u.disabled })}>
                    {u.disabled ? "Enable" : "Disable"}
                  </button>
                ) : u.disabled ? (
                  "disabled"
                ) : (
                  "active"
                )}
              </td>
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
      {manage && (
        <form
          className="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            api("POST", "/v1/groups", { body: { name: groupName } }).then(() => (setGroupName(""), load()), (err: unknown) => setError(errorText(err)));
          }}
        >
          <label className="field">
            New group
            <input value={groupName} onChange={(e) => setGroupName(e.target.value)} required maxLength={64} />
          </label>
          <button type="submit">Add group</button>
        </form>
      )}
      <ul>
        {groups.map((g) => (
          <li key={g.name} data-testid={`group-${g.name}`}>
            <strong>{g.name}</strong>:{" "}
            {g.members.length === 0
              ? "no members"
              : g.members.map((m) => (
                  <span key={m} className="member">
                    {m}
                    {manage && (
                      <button type="button" className="linklike" aria-label={`Remove ${m} from ${g.name}`} onClick={() => membership(g.name, m, false)}>
                        ×
                      </button>
                    )}{" "}
                  </span>
                ))}
            {manage && (
              <select aria-label={`Add a member to ${g.name}`} value="" onChange={(e) => e.target.value && membership(g.name, e.target.value, true)}>
                <option value="">add a member…</option>
                {users
                  .filter((u) => !g.members.includes(u.name))
                  .map((u) => (
                    <option key={u.name}>{u.name}</option>
                  ))}
              </select>
            )}
          </li>
        ))}
      </ul>
    </main>
  );
}
