/**
 * Users, groups and tokens behave the same on SQLite and on PostgreSQL (a cluster's manager keeps them there):
 * creation, authentication by token, expiry, revocation along the minting chain, disabling, groups.
 */
import assert from "node:assert/strict";
import { dialectTest, testInventory } from "../inventory/testing/dialects.ts";
import { UserStore } from "./users.ts";

dialectTest("a user is created, authenticates with its token, and is seen with its roles, grant and groups", async (t, dialect) => {
  const users = new UserStore(await testInventory(t, dialect));
  const alice = await users.create({ name: "alice", roles: ["operator", "operator"], introspect: true }, "root");
  assert.deepEqual({ roles: alice.roles, introspect: alice.introspect, disabled: alice.disabled, groups: alice.groups }, { roles: ["operator"], introspect: true, disabled: false, groups: [] });
  await users.create({ name: "Bob", roles: ["auditor"], introspect: false }, "root");
  await assert.rejects(users.create({ name: "alice", roles: [], introspect: false }, "root"), (e: Error & { field?: string }) => e.field === "name" && /exists/.test(e.message));
  await users.createGroup("ops");
  await users.setMembership("ops", "alice", true);
  await users.setMembership("ops", "alice", true); // idempotent (ON CONFLICT DO NOTHING on both)
  await assert.rejects(users.setMembership("ops", "Bob", false), /not a member/);

  const { token, id } = await users.issueToken("alice", "cli");
  const actor = await users.authenticate(token);
  assert.deepEqual(actor && { name: actor.name, roles: actor.roles, introspect: actor.introspect, groups: actor.groups, via: actor.via, token: actor.token }, {
    name: "alice",
    roles: ["operator"],
    introspect: true,
    groups: ["ops"],
    via: "token",
    token: { id, expiresAt: null },
  });
  assert.equal(await users.authenticate(token.slice(0, -1) + (token.endsWith("A") ? "B" : "A")), undefined);
  const [listed] = await users.listTokens("alice");
  assert.equal(listed?.revoked, false);
  assert.notEqual(listed?.lastUsedAt, null);
  // Bytewise order, as SQLite sorts: "Bob" before "alice".
  assert.deepEqual((await users.list()).map((u) => u.name), ["Bob", "alice"]);
  assert.deepEqual(await users.listGroups(), [{ name: "ops", members: ["alice"] }]);
});

dialectTest("expired, revoked (with every token minted from it) and disabled-user tokens do not authenticate", async (t, dialect) => {
  const users = new UserStore(await testInventory(t, dialect));
  await users.create({ name: "admin", roles: ["admin"], introspect: false }, "root");
  await users.create({ name: "carol", roles: ["auditor"], introspect: false }, "root");
  const past = await users.issueToken("carol", "old", "2020-01-01T00:00:00.000Z");
  assert.equal(await users.authenticate(past.token), undefined);

  const parent = await users.issueToken("admin", "parent", "2099-01-01T00:00:00.000Z");
  const child = await users.issueToken("carol", "child", undefined, { id: parent.id, expiresAt: parent.expiresAt });
  assert.equal(child.expiresAt, "2099-01-01T00:00:00.000Z");
  await assert.rejects(users.issueToken("carol", "later", "2100-01-01T00:00:00.000Z", { id: parent.id, expiresAt: parent.expiresAt }), (e: Error & { field?: string }) => e.field === "expiresAt");
  assert.equal((await users.authenticate(child.token))?.name, "carol");
  assert.equal(await users.revokeToken("admin", parent.id), 2);
  assert.equal(await users.authenticate(parent.token), undefined);
  assert.equal(await users.authenticate(child.token), undefined);
  assert.equal(await users.revokeTokens("carol"), 1); // "old" was still unrevoked; "child" already was

  const fresh = await users.issueToken("carol", "fresh");
  assert.equal((await users.authenticate(fresh.token))?.name, "carol");
  await users.update("carol", { disabled: true, quotas: { vms: 2 } });
  assert.equal(await users.authenticate(fresh.token), undefined);
  const carol = await users.get("carol");
  assert.equal(carol.disabled, true);
  assert.deepEqual(carol.quotas, { vms: 2 });
});
