/**
 * Users, groups and API tokens. A token is 32 random bytes shown once at creation; only its sha256 is stored
 * (tokens are high-entropy, so a fast hash is enough and lookups stay constant-time by index). The local unix
 * socket needs no token: its directory is 0700, so only the daemon's own OS user (or root) can connect, and it
 * maps to the vigil user of the same name, created at first start as an admin.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { VigilError, q } from "../errors.ts";
import type { Db } from "../inventory/db.ts";
import type { UserRow } from "../inventory/schema.ts";
import { quotaLimitsSchema, type QuotaLimits } from "../config.ts";
import { ROLES, type Actor, type Role } from "./permissions.ts";

export const TOKEN_PREFIX = "vgl_";

export interface UserView {
  id: string;
  name: string;
  roles: Role[];
  introspect: boolean;
  disabled: boolean;
  groups: string[];
  createdAt: string;
  createdBy: string;
  /** Per-user quota overrides (null: the site defaults). */
  quotas: QuotaLimits | null;
}

/** A token as its owner may see it: never the secret. */
export interface TokenView {
  id: string;
  name: string;
  createdAt: string;
  expiresAt: string | null;
  lastUsedAt: string | null;
  revoked: boolean;
  /** The token it was minted with, if any. */
  parentId: string | null;
}

export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

function parseRoles(json: string): Role[] {
  const parsed = JSON.parse(json) as unknown;
  return Array.isArray(parsed) ? parsed.filter((r): r is Role => (ROLES as readonly string[]).includes(r as string)) : [];
}

function parseQuotas(json: string | null): QuotaLimits | null {
  if (json === null) return null;
  const parsed = quotaLimitsSchema.safeParse(JSON.parse(json));
  return parsed.success ? parsed.data : null;
}

export class UserStore {
  constructor(private readonly db: Db) {}

  private async groupsOf(userId: string): Promise<string[]> {
    const rows = await this.db.selectFrom("group_members").select("group_name").where("user_id", "=", userId).orderBy("group_name").execute();
    return rows.map((r) => r.group_name);
  }

  private async view(row: UserRow): Promise<UserView> {
    return {
      id: row.id,
      name: row.name,
      roles: parseRoles(row.roles),
      introspect: row.introspect === 1,
      disabled: row.disabled === 1,
      groups: await this.groupsOf(row.id),
      createdAt: row.created_at,
      createdBy: row.created_by,
      quotas: parseQuotas(row.quotas),
    };
  }

  async actorFor(row: UserRow, via: Actor["via"]): Promise<Actor> {
    const v = await this.view(row);
    return { userId: v.id, name: v.name, roles: v.roles, introspect: v.introspect, groups: v.groups, via };
  }

  async findByName(name: string): Promise<UserRow | undefined> {
    return this.db.selectFrom("users").selectAll().where("name", "=", name).executeTakeFirst();
  }

  async get(name: string): Promise<UserView> {
    const row = await this.findByName(name);
    if (!row) throw new VigilError("VIGIL_USER_NOT_FOUND", `User ${q(name)} does not exist`);
    return this.view(row);
  }

  async list(): Promise<UserView[]> {
    const rows = await this.db.selectFrom("users").selectAll().orderBy("name").execute();
    return Promise.all(rows.map((r) => this.view(r)));
  }

  async create(input: { name: string; roles: Role[]; introspect: boolean }, createdBy: string): Promise<UserView> {
    if (await this.findByName(input.name)) throw new VigilError("VIGIL_CONFLICT", `Cannot add user ${q(input.name)}: it exists`, { field: "name" });
    const row: UserRow = {
      id: randomUUID(),
      name: input.name,
      roles: JSON.stringify([...new Set(input.roles)]),
      introspect: input.introspect ? 1 : 0,
      disabled: 0,
      created_at: new Date().toISOString(),
      created_by: createdBy,
      quotas: null,
    };
    await this.db.insertInto("users").values(row).execute();
    return this.view(row);
  }

  async update(name: string, change: { roles?: Role[] | undefined; introspect?: boolean | undefined; disabled?: boolean | undefined; quotas?: QuotaLimits | null | undefined }): Promise<UserView> {
    const row = await this.findByName(name);
    if (!row) throw new VigilError("VIGIL_USER_NOT_FOUND", `User ${q(name)} does not exist`);
    const values: Partial<UserRow> = {};
    if (change.roles) values.roles = JSON.stringify([...new Set(change.roles)]);
    if (change.introspect !== undefined) values.introspect = change.introspect ? 1 : 0;
    if (change.disabled !== undefined) values.disabled = change.disabled ? 1 : 0;
    if (change.quotas !== undefined) values.quotas = change.quotas === null ? null : JSON.stringify(change.quotas);
    if (Object.keys(values).length > 0) await this.db.updateTable("users").set(values).where("id", "=", row.id).execute();
    return this.get(name);
  }

  /** The limits for a VM owner: a user's own overrides over the site's defaults; a group has the defaults. */
  async quotasFor(owner: string, site: QuotaLimits): Promise<QuotaLimits> {
    const m = /^user:(.+)$/.exec(owner);
    const row = m ? await this.findByName(m[1]!) : undefined;
    const own = row ? parseQuotas(row.quotas) : null;
    return own ? { ...site, ...own } : site;
  }

  /** The vigil user behind the local unix socket; created as an admin with introspection on first start. */
  async ensureLocalUser(osUser: string): Promise<UserRow> {
    const existing = await this.findByName(osUser);
    if (existing) return existing;
    await this.create({ name: osUser, roles: ["admin"], introspect: true }, "system");
    return (await this.findByName(osUser))!;
  }

  /**
   * Issues a new token for `name`; the returned secret is never stored or shown again. A token minted with
   * another token (`parent`) never outlives it: its expiry is the parent's when none is asked for, and asking
   * for a later one is refused.
   */
  async issueToken(name: string, tokenName: string, expiresAt?: string, parent?: { id: string; expiresAt: string | null }): Promise<{ id: string; token: string; expiresAt: string | null }> {
    const row = await this.findByName(name);
    if (!row) throw new VigilError("VIGIL_USER_NOT_FOUND", `User ${q(name)} does not exist`);
    let expires = expiresAt ?? null;
    if (parent?.expiresAt) {
      if (expires === null) expires = parent.expiresAt;
      else if (Date.parse(expires) > Date.parse(parent.expiresAt)) {
        throw new VigilError("VIGIL_BAD_REQUEST", `Cannot issue a token expiring at ${q(expires)}: the token you are using expires at ${q(parent.expiresAt)}, and a token may not outlive the one it was made with`, { field: "expiresAt" });
      }
    }
    const token = TOKEN_PREFIX + randomBytes(32).toString("base64url");
    const id = randomUUID();
    await this.db
      .insertInto("tokens")
      .values({ id, user_id: row.id, name: tokenName, hash: hashToken(token), created_at: new Date().toISOString(), expires_at: expires, last_used_at: null, revoked: 0, parent_id: parent?.id ?? null })
      .execute();
    return { id, token, expiresAt: expires };
  }

  async listTokens(name: string): Promise<TokenView[]> {
    const row = await this.findByName(name);
    if (!row) throw new VigilError("VIGIL_USER_NOT_FOUND", `User ${q(name)} does not exist`);
    const rows = await this.db.selectFrom("tokens").selectAll().where("user_id", "=", row.id).orderBy("created_at").orderBy("id").execute();
    return rows.map((t) => ({ id: t.id, name: t.name, createdAt: t.created_at, expiresAt: t.expires_at, lastUsedAt: t.last_used_at, revoked: t.revoked === 1, parentId: t.parent_id }));
  }

  async revokeTokens(name: string): Promise<number> {
    const row = await this.findByName(name);
    if (!row) throw new VigilError("VIGIL_USER_NOT_FOUND", `User ${q(name)} does not exist`);
    const res = await this.db.updateTable("tokens").set({ revoked: 1 }).where("user_id", "=", row.id).where("revoked", "=", 0).executeTakeFirst();
    return Number(res.numUpdatedRows);
  }

  /**
   * Revokes one of `name`'s tokens and every token minted from it, transitively (they may belong to other
   * users: an admin's token used to mint someone else's). Returns how many were revoked.
   */
  async revokeToken(name: string, tokenId: string): Promise<number> {
    const row = await this.findByName(name);
    if (!row) throw new VigilError("VIGIL_USER_NOT_FOUND", `User ${q(name)} does not exist`);
    const own = await this.db.selectFrom("tokens").select("id").where("id", "=", tokenId).where("user_id", "=", row.id).executeTakeFirst();
    if (!own) throw new VigilError("VIGIL_NOT_FOUND", `User ${q(name)} has no token ${q(tokenId)}`, { field: "id" });
    const ids = [tokenId];
    for (let i = 0; i < ids.length && ids.length < 100_000; i++) {
      const children = await this.db.selectFrom("tokens").select("id").where("parent_id", "=", ids[i]!).execute();
      for (const c of children) if (!ids.includes(c.id)) ids.push(c.id);
    }
    const res = await this.db.updateTable("tokens").set({ revoked: 1 }).where("id", "in", ids).where("revoked", "=", 0).executeTakeFirst();
    return Number(res.numUpdatedRows);
  }

  /** The actor a bearer token stands for, or undefined for an unknown, revoked or expired token or a disabled user. */
  async authenticate(token: string): Promise<Actor | undefined> {
    if (!token.startsWith(TOKEN_PREFIX) || token.length > 200) return undefined;
    const found = await this.db
      .selectFrom("tokens")
      .innerJoin("users", "users.id", "tokens.user_id")
      .selectAll("users")
      .select(["tokens.id as token_id", "tokens.expires_at as token_expires", "tokens.revoked as token_revoked"])
      .where("tokens.hash", "=", hashToken(token))
      .executeTakeFirst();
    if (!found || found.token_revoked === 1 || found.disabled === 1) return undefined;
    if (found.token_expires && Date.parse(found.token_expires) < Date.now()) return undefined;
    await this.db.updateTable("tokens").set({ last_used_at: new Date().toISOString() }).where("id", "=", found.token_id).execute();
    const { token_id: id, token_expires: expiresAt, token_revoked: _r, ...user } = found;
    return { ...(await this.actorFor(user, "token")), token: { id, expiresAt } };
  }

  /**
   * The approver named on a new VM or an ownership change must be an existing, enabled user other than the
   * one asking: approving your own request is no approval. (vigil records the approver; it does not ask them.)
   */
  async checkApprover(approver: string | null | undefined, requester: string, context: string): Promise<void> {
    if (approver === undefined || approver === null || approver === "") return;
    const row = await this.findByName(approver);
    if (!row || row.disabled === 1) throw new VigilError("VIGIL_BAD_REQUEST", `${context}: approver ${q(approver)} is not a user of this site${row ? " (disabled)" : ""}`, { field: "approver" });
    if (approver === requester) throw new VigilError("VIGIL_BAD_REQUEST", `${context}: approver ${q(approver)} is the requester; someone else must approve`, { field: "approver" });
  }

  async createGroup(name: string): Promise<void> {
    const exists = await this.db.selectFrom("groups").select("name").where("name", "=", name).executeTakeFirst();
    if (exists) throw new VigilError("VIGIL_CONFLICT", `Cannot add group ${q(name)}: it exists`, { field: "name" });
    await this.db.insertInto("groups").values({ name, created_at: new Date().toISOString() }).execute();
  }

  async listGroups(): Promise<Array<{ name: string; members: string[] }>> {
    const groups = await this.db.selectFrom("groups").select("name").orderBy("name").execute();
    const members = await this.db.selectFrom("group_members").innerJoin("users", "users.id", "group_members.user_id").select(["group_name", "users.name"]).orderBy("users.name").execute();
    return groups.map((g) => ({ name: g.name, members: members.filter((m) => m.group_name === g.name).map((m) => m.name) }));
  }

  async setMembership(group: string, user: string, member: boolean): Promise<void> {
    const g = await this.db.selectFrom("groups").select("name").where("name", "=", group).executeTakeFirst();
    if (!g) throw new VigilError("VIGIL_NOT_FOUND", `Group ${q(group)} does not exist`, { field: "group" });
    const u = await this.findByName(user);
    if (!u) throw new VigilError("VIGIL_USER_NOT_FOUND", `User ${q(user)} does not exist`, { field: "user" });
    if (member) {
      await this.db.insertInto("group_members").values({ group_name: group, user_id: u.id }).onConflict((oc) => oc.doNothing()).execute();
    } else {
      const r = await this.db.deleteFrom("group_members").where("group_name", "=", group).where("user_id", "=", u.id).executeTakeFirst();
      if (r.numDeletedRows === 0n) throw new VigilError("VIGIL_CONFLICT", `Cannot remove user ${q(user)} from group ${q(group)}: not a member`, { field: "user" });
    }
  }

  async groupExists(name: string): Promise<boolean> {
    return (await this.db.selectFrom("groups").select("name").where("name", "=", name).executeTakeFirst()) !== undefined;
  }
}
