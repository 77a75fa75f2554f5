import { test } from "node:test";
import assert from "node:assert/strict";
import { can, PERMISSIONS, ROLES, type Actor, type Role } from "./permissions.ts";

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
