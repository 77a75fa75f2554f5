/**
 * Users, groups and tokens as guarded operations: the HTTP API and the CLI both come through here, so every
 * change to who may do what is authorized and lands in the audit log like any VM operation.
 */
import { z } from "zod";
import { VigilError } from "../errors.ts";
import { parseOrThrow } from "../validation.ts";
import type { Guard, RequestContext } from "./guard.ts";
import { ROLES, type Actor } from "./permissions.ts";
import type { UserStore, UserView } from "./users.ts";

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

  /** Adds a user and issues its first token (shown once). */
  async add(ctx: RequestContext, input: unknown): Promise<{ user: UserView; token: string }> {
    const name = typeof (input as { name?: unknown })?.name === "string" ? String((input as { name: string }).name).slice(0, 64) : null;
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
    return this.guard.run(ctx, { action: "user.update", permission: "user.manage", target: { kind: "user", name }, details: typeof input === "object" && input !== null ? (input as Record<string, unknown>) : {} }, async () => {
      const change = parseOrThrow(updateUserSchema, input, "user change");
      if (name === ctx.actor.name && (change.disabled === true || (change.roles && !change.roles.includes("admin") && ctx.actor.roles.includes("admin")))) {
        throw new VigilError("VIGIL_CONFLICT", "Cannot lock yourself out: an admin may not disable or demote their own account");
      }
      return this.users.update(name, change);
    });
  }

  /** A user may issue and revoke their own tokens; doing it for others needs user.manage. */
  async issueToken(ctx: RequestContext, name: string, input: unknown): Promise<{ id: string; token: string; expiresAt: string | null }> {
    const self = name === ctx.actor.name;
    return this.guard.run(
      ctx,
      { action: "user.token", permission: self ? "self" : "user.manage", target: { kind: "user", name } },
      async () => {
        const req = parseOrThrow(issueTokenSchema, input ?? {}, "token request");
        return this.users.issueToken(name, req.name, req.expiresAt);
      },
      (r) => ({ tokenId: r.id }),
    );
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
