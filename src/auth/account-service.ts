/**
 * Users, groups and tokens as guarded operations: the HTTP API and the CLI both come through here, so every
 * change to who may do what is authorized and lands in the audit log like any VM operation.
 */
import { z } from "zod";
import { quotaLimitsSchema } from "../config.ts";
import { VigilError } from "../errors.ts";
import { parseOrThrow } from "../validation.ts";
import type { Guard, RequestContext } from "./guard.ts";
import { ROLES, can, type Actor } from "./permissions.ts";
import type { TokenView, UserStore, UserView } from "./users.ts";

export const userNameSchema = z.string().regex(/^[a-z_][a-z0-9_.-]{0,63}$/, "must be 1-64 characters: lower-case letters, digits and _.-, starting with a letter or _");

export const addUserSchema = z.strictObject({
  name: userNameSchema,
  roles: z.array(z.enum(ROLES)).max(4).default([]),
  introspect: z.boolean().default(false),
});

export const updateUserSchema = z.strictObject({
  roles: z.array(z.enum(ROLES)).max(4).optional(),
  introspect: z.boolean().optional(),
  disabled: z.boolean().optional(),
  /** Limits replacing the site defaults for VMs this user owns (each key given overrides that default); null: back to the defaults. */
  quotas: quotaLimitsSchema.nullable().optional(),
});

export const issueTokenSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9 _.-]{1,64}$/, "must be 1-64 letters, digits, spaces and _.-").default("cli"),
  expiresAt: z.iso.datetime().optional(),
});

export class AccountService {
  constructor(
    private readonly users: UserStore,
    private readonly guard: Guard,
  ) {}

  whoami(ctx: RequestContext): Actor {
    return ctx.actor;
  }

  async list(ctx: RequestContext): Promise<UserView[]> {
    await this.guard.authorize(ctx, { action: "user.list", permission: "user.read", target: { kind: "user" }, readOnly: true });
    return this.users.list();
  }

  /**
   * Only a holder of the introspection grant may give it (to someone else: whoever holds it has it already).
   * So an admin without it cannot grant it to itself, to an account it creates, or reach it through such an
   * account; the first holder is the daemon's own OS user (the local socket), i.e. whoever runs the host.
   */
  private async authorizeIntrospectGrant(ctx: RequestContext, action: string, name: string | null): Promise<void> {
    await this.guard.authorize(ctx, { action, permission: "vm.introspect", target: { kind: "user", name }, details: { introspect: true } });
  }

  /** Adds a user and issues its first token (shown once). */
  async add(ctx: RequestContext, input: unknown): Promise<{ user: UserView; token: string }> {
    const name = typeof (input as { name?: unknown })?.name === "string" ? String((input as { name: string }).name).slice(0, 64) : null;
    if ((input as { introspect?: unknown } | null)?.introspect === true && can(ctx.actor, "user.manage")) await this.authorizeIntrospectGrant(ctx, "user.add", name);
    return this.guard.run(
      ctx,
      { action: "user.add", permission: "user.manage", target: { kind: "user", name } },
      async () => {
        const req = parseOrThrow(addUserSchema, input, "user");
        const user = await this.users.create(req, ctx.actor.name);
        const { token } = await this.users.issueToken(user.name, "initial");
        return { user, token };
      },
      (r) => ({ id: r.user.id, roles: r.user.roles, introspect: r.user.introspect }),
    );
  }

  async update(ctx: RequestContext, name: string, input: unknown): Promise<UserView> {
    if ((input as { introspect?: unknown } | null)?.introspect === true && can(ctx.actor, "user.manage")) await this.authorizeIntrospectGrant(ctx, "user.update", name);
    return this.guard.run(ctx, { action: "user.update", permission: "user.manage", target: { kind: "user", name }, details: typeof input === "object" && input !== null ? (input as Record<string, unknown>) : {} }, async () => {
      const change = parseOrThrow(updateUserSchema, input, "user change");
      if (name === ctx.actor.name && (change.disabled === true || (change.roles && !change.roles.includes("admin") && ctx.actor.roles.includes("admin")))) {
        throw new VigilError("VIGIL_CONFLICT", "Cannot lock yourself out: an admin may not disable or demote their own account");
      }
      return this.users.update(name, change);
    });
  }

  /**
   * A user may issue, list and revoke their own tokens; doing it for others needs user.manage (user.read to
   * list). A token minted with a token never outlives it. A token for an account that holds the introspection
   * grant is issued only by someone who holds it too (else it would be a way to obtain the grant).
   */
  async issueToken(ctx: RequestContext, name: string, input: unknown): Promise<{ id: string; token: string; expiresAt: string | null }> {
    const self = name === ctx.actor.name;
    if (!self && can(ctx.actor, "user.manage") && (await this.users.findByName(name))?.introspect === 1) await this.authorizeIntrospectGrant(ctx, "user.token", name);
    return this.guard.run(
      ctx,
      { action: "user.token", permission: self ? "self" : "user.manage", target: { kind: "user", name } },
      async () => {
        const req = parseOrThrow(issueTokenSchema, input ?? {}, "token request");
        return this.users.issueToken(name, req.name, req.expiresAt, ctx.actor.token);
      },
      (r) => ({ tokenId: r.id, expiresAt: r.expiresAt, ...(ctx.actor.token ? { parentTokenId: ctx.actor.token.id } : {}) }),
    );
  }

  async listTokens(ctx: RequestContext, name: string): Promise<TokenView[]> {
    const self = name === ctx.actor.name;
    await this.guard.authorize(ctx, { action: "user.tokens", permission: self ? "self" : "user.read", target: { kind: "user", name }, readOnly: true });
    return this.users.listTokens(name);
  }

  async revokeToken(ctx: RequestContext, name: string, tokenId: string): Promise<{ revoked: number }> {
    const self = name === ctx.actor.name;
    return this.guard.run(ctx, { action: "user.revoke-token", permission: self ? "self" : "user.manage", target: { kind: "user", name }, details: { tokenId } }, async () => ({
      revoked: await this.users.revokeToken(name, tokenId),
    }));
  }

  async revokeTokens(ctx: RequestContext, name: string): Promise<{ revoked: number }> {
    const self = name === ctx.actor.name;
    return this.guard.run(ctx, { action: "user.revoke-tokens", permission: self ? "self" : "user.manage", target: { kind: "user", name } }, async () => ({
      revoked: await this.users.revokeTokens(name),
    }));
  }

  async listGroups(ctx: RequestContext) {
    await this.guard.authorize(ctx, { action: "group.list", permission: "user.read", target: { kind: "group" }, readOnly: true });
    return this.users.listGroups();
  }

  async addGroup(ctx: RequestContext, name: string): Promise<{ name: string }> {
    return this.guard.run(ctx, { action: "group.add", permission: "user.manage", target: { kind: "group", name } }, async () => {
      parseOrThrow(z.strictObject({ name: userNameSchema }), { name }, "group");
      await this.users.createGroup(name);
      return { name };
    });
  }

  async setMembership(ctx: RequestContext, group: string, user: string, member: boolean): Promise<{ group: string; user: string; member: boolean }> {
    return this.guard.run(ctx, { action: member ? "group.add-member" : "group.remove-member", permission: "user.manage", target: { kind: "group", name: group }, details: { user } }, async () => {
      await this.users.setMembership(group, user, member);
      return { group, user, member };
    });
  }
}
