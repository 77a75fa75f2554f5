import { test } from "node:test";
import assert from "node:assert/strict";
import { can, mayFollowProgress, mayReadRecord, PERMISSIONS, readsAuditRecords, ROLES, type Actor, type Role } from "./permissions.ts";

const actor = (roles: Role[], extra: Partial<Actor> = {}): Actor => ({ userId: "u1", name: "alice", roles, introspect: false, groups: ["dev"], via: "token", ...extra });

test("deny by default: an actor with no role may do nothing", () => {
  for (const p of PERMISSIONS) assert.equal(can(actor([]), p, "user:alice"), false, p);
});

test("owners control their own and their group's VMs, nobody else's", () => {
  const a = actor(["owner"]);
  assert.equal(can(a, "vm.control", "user:alice"), true);
  assert.equal(can(a, "vm.delete", "group:dev"), true);
  assert.equal(can(a, "vm.control", "user:bob"), false);
  assert.equal(can(a, "vm.read", "group:ops"), false);
  assert.equal(can(a, "vm.create"), true);
  assert.equal(can(a, "user.manage"), false);
});

test("auditors read everything and change nothing", () => {
  const a = actor(["auditor"]);
  for (const p of ["vm.read", "audit.read", "user.read", "image.read"] as const) assert.equal(can(a, p, "user:bob"), true, p);
  for (const p of ["vm.create", "vm.control", "vm.delete", "vm.console", "vm.exec", "user.manage", "vm.introspect"] as const) assert.equal(can(a, p, "user:bob"), false, p);
});

test("introspection is never implied by a role, and needs read access", () => {
  for (const r of ROLES) assert.equal(can(actor([r]), "vm.introspect", "user:alice"), false, r);
  assert.equal(can(actor(["owner"], { introspect: true }), "vm.introspect", "user:alice"), true);
  assert.equal(can(actor(["owner"], { introspect: true }), "vm.introspect", "user:bob"), false);
  assert.equal(can(actor(["admin"], { introspect: true }), "vm.introspect", "user:bob"), true);
});

test("operators run any VM but delete only their own", () => {
  const a = actor(["operator"]);
  assert.equal(can(a, "vm.control", "user:bob"), true);
  assert.equal(can(a, "vm.delete", "user:bob"), false);
  assert.equal(can(a, "vm.delete", "user:alice"), true);
});

test("mayReadRecord: audit.read reads every record, others only records about a VM they may read", () => {
  const vm = { target: { id: "vm-1" } };
  const host = { target: { id: null } };
  for (const r of [["admin"], ["auditor"]] as Role[][]) {
    assert.equal(mayReadRecord(actor(r), host, undefined), true, r.join());
    assert.equal(mayReadRecord(actor(r), vm, "user:bob"), true, r.join());
  }
  const owner = actor(["owner"]);
  assert.equal(mayReadRecord(owner, vm, "user:alice"), true);
  assert.equal(mayReadRecord(owner, vm, "group:dev"), true);
  assert.equal(mayReadRecord(owner, vm, "user:bob"), false);
  assert.equal(mayReadRecord(owner, vm, undefined), false, "a VM that no longer exists");
  assert.equal(mayReadRecord(owner, host, "user:alice"), false, "no target id: not about a VM");
  assert.equal(mayReadRecord(actor(["operator"]), vm, "user:bob"), true);
  assert.equal(mayReadRecord(actor([]), vm, "user:alice"), false);
  assert.deepEqual([readsAuditRecords(actor([])), readsAuditRecords(owner), readsAuditRecords(actor(["auditor"]))], [false, true, true]);
});

test("mayFollowProgress: one's own request, or any as admin; a request nobody sent is nobody's", () => {
  assert.equal(mayFollowProgress(actor(["owner"]), "alice"), true);
  assert.equal(mayFollowProgress(actor(["owner"]), "bob"), false);
  assert.equal(mayFollowProgress(actor(["owner"]), undefined), false);
  assert.equal(mayFollowProgress(actor(["auditor"]), "bob"), false);
  assert.equal(mayFollowProgress(actor(["admin"]), "bob"), true);
});

test("moving a VM to another host (vm.migrate) is the operators' and admins' call, not an owner's, not an auditor's", () => {
  assert.equal(can(actor(["admin"]), "vm.migrate", "user:bob"), true);
  assert.equal(can(actor(["operator"]), "vm.migrate", "user:bob"), true);
  assert.equal(can(actor(["owner"]), "vm.migrate", "user:alice"), false, "not even their own VM");
  assert.equal(can(actor(["auditor"]), "vm.migrate", "user:bob"), false);
});
