/** User, group and token routes. */
import { createRoute, z } from "@hono/zod-openapi";
import { addUserSchema, issueTokenSchema, updateUserSchema } from "../../auth/account-service.ts";
import { ROLES } from "../../auth/permissions.ts";
import type { ApiDeps, App } from "../context.ts";
import { body, json, optionalBody, reply, withAccess } from "../route-kit.ts";
import { UserSchema } from "../schemas.ts";

const UserParams = z.object({ name: z.string().max(64).openapi({ param: { name: "name", in: "path" } }) });
const MemberParams = z.object({
  group: z.string().max(64).openapi({ param: { name: "group", in: "path" } }),
  user: z.string().max(64).openapi({ param: { name: "user", in: "path" } }),
});
const TokenSchema = z.object({ id: z.string(), token: z.string(), expiresAt: z.string().nullable() }).openapi("Token");
const TokenInfoSchema = z.object({ id: z.string(), name: z.string(), createdAt: z.string(), expiresAt: z.string().nullable(), lastUsedAt: z.string().nullable(), revoked: z.boolean(), parentId: z.string().nullable() }).openapi("TokenInfo");
const TokenParams = z.object({
  name: z.string().max(64).openapi({ param: { name: "name", in: "path" } }),
  id: z.string().max(64).openapi({ param: { name: "id", in: "path" } }),
});
const MembershipSchema = z.object({ group: z.string(), user: z.string(), member: z.boolean() });

export function registerAccountRoutes(app: App, d: ApiDeps): void {
  app.openapi(
    createRoute(withAccess("authenticated", { method: "get", path: "/v1/whoami", tags: ["users"], summary: "The user this request is authenticated as", responses: { 200: json(z.object({ name: z.string(), roles: z.array(z.enum(ROLES)), introspect: z.boolean(), groups: z.array(z.string()), via: z.string() }), "You") } })),
    async (c) => {
      const a = d.accounts.whoami(c.get("ctx"));
      return reply(c, { name: a.name, roles: a.roles, introspect: a.introspect, groups: a.groups, via: a.via });
    },
  );

  app.openapi(
    createRoute(withAccess("user.read", { method: "get", path: "/v1/users", tags: ["users"], summary: "List users", responses: { 200: json(z.object({ users: z.array(UserSchema) }), "Users") } })),
    async (c) => reply(c, { users: await d.accounts.list(c.get("ctx")) }),
  );

  app.openapi(
    createRoute(withAccess("user.manage", { method: "post", path: "/v1/users", tags: ["users"], summary: "Add a user; its first token is returned once", request: body(addUserSchema), responses: { 201: json(z.object({ user: UserSchema, token: z.string() }), "The user and its token") } })),
    async (c) => reply(c, await d.accounts.add(c.get("ctx"), c.req.valid("json")), 201),
  );

  app.openapi(
    createRoute(withAccess("user.manage", { method: "patch", path: "/v1/users/{name}", tags: ["users"], summary: "Change a user's roles, introspection grant or disabled flag", request: { params: UserParams, ...body(updateUserSchema) }, responses: { 200: json(UserSchema, "The user") } })),
    async (c) => reply(c, await d.accounts.update(c.get("ctx"), c.req.valid("param").name, c.req.valid("json"))),
  );

  app.openapi(
    createRoute(withAccess("self", { method: "post", path: "/v1/users/{name}/tokens", tags: ["users"], summary: "Issue a token (your own, or anyone's with user.manage); shown once", request: { params: UserParams, ...optionalBody(issueTokenSchema) }, responses: { 201: json(TokenSchema, "The token") } })),
    async (c) => reply(c, await d.accounts.issueToken(c.get("ctx"), c.req.valid("param").name, c.req.valid("json") ?? {}), 201),
  );

  app.openapi(
    createRoute(withAccess("self", { method: "get", path: "/v1/users/{name}/tokens", tags: ["users"], summary: "List a user's tokens, never their secrets (your own, or anyone's with user.read)", request: { params: UserParams }, responses: { 200: json(z.object({ tokens: z.array(TokenInfoSchema) }), "Tokens") } })),
    async (c) => reply(c, { tokens: await d.accounts.listTokens(c.get("ctx"), c.req.valid("param").name) }),
  );

  app.openapi(
    createRoute(withAccess("self", { method: "delete", path: "/v1/users/{name}/tokens/{id}", tags: ["users"], summary: "Revoke one token and every token minted with it (your own, or anyone's with user.manage)", request: { params: TokenParams }, responses: { 200: json(z.object({ revoked: z.number() }), "How many were revoked") } })),
    async (c) => reply(c, await d.accounts.revokeToken(c.get("ctx"), c.req.valid("param").name, c.req.valid("param").id)),
  );

  app.openapi(
    createRoute(withAccess("self", { method: "delete", path: "/v1/users/{name}/tokens", tags: ["users"], summary: "Revoke all tokens of a user (your own, or anyone's with user.manage)", request: { params: UserParams }, responses: { 200: json(z.object({ revoked: z.number() }), "How many were revoked") } })),
    async (c) => reply(c, await d.accounts.revokeTokens(c.get("ctx"), c.req.valid("param").name)),
  );

  app.openapi(
    createRoute(withAccess("user.read", { method: "get", path: "/v1/groups", tags: ["users"], summary: "List groups and their members", responses: { 200: json(z.object({ groups: z.array(z.object({ name: z.string(), members: z.array(z.string()) })) }), "Groups") } })),
    async (c) => reply(c, { groups: await d.accounts.listGroups(c.get("ctx")) }),
  );

  app.openapi(
    createRoute(withAccess("user.manage", { method: "post", path: "/v1/groups", tags: ["users"], summary: "Add a group", request: body(z.strictObject({ name: z.string().max(64) })), responses: { 201: json(z.object({ name: z.string() }), "The group") } })),
    async (c) => reply(c, await d.accounts.addGroup(c.get("ctx"), c.req.valid("json").name), 201),
  );

  app.openapi(
    createRoute(withAccess("user.manage", { method: "put", path: "/v1/groups/{group}/members/{user}", tags: ["users"], summary: "Add a user to a group", request: { params: MemberParams }, responses: { 200: json(MembershipSchema, "Membership") } })),
    async (c) => reply(c, await d.accounts.setMembership(c.get("ctx"), c.req.valid("param").group, c.req.valid("param").user, true)),
  );

  app.openapi(
    createRoute(withAccess("user.manage", { method: "delete", path: "/v1/groups/{group}/members/{user}", tags: ["users"], summary: "Remove a user from a group", request: { params: MemberParams }, responses: { 200: json(MembershipSchema, "Membership") } })),
    async (c) => reply(c, await d.accounts.setMembership(c.get("ctx"), c.req.valid("param").group, c.req.valid("param").user, false)),
  );
}
