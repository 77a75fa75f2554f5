/**
 * Property tests of the dossier's parser (a dossier comes from another host: hostile input). Whatever arrives —
 * arbitrary JSON, or a valid dossier with any one value replaced by anything — the parser either accepts a
 * dossier that satisfies its own invariants or refuses it with a VigilError naming a field; it never throws
 * anything else.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { VigilError } from "../errors.ts";
import { parseOrThrow } from "../validation.ts";
import { dossierSchema, DOSSIER_FORMAT, DOSSIER_VERSION } from "./dossier.ts";

const ID = "6f1c7f52-6d4e-4b43-9a53-2b8d1f0e4a10";
const GEN = "0b1d2c3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";
const T = "2026-12-07T01:00:00.000Z";

const valid = () => ({
  format: DOSSIER_FORMAT,
  version: DOSSIER_VERSION,
  source: { host: "host-a", exportedAt: T, state: "running" },
  vm: {
    id: ID, name: "web", vmgenid: GEN, generation: 2, owner: "user:bob", approver: null, purpose: "p", expiresAt: null, labels: { team: "blue" },
    lineage: { kind: "image", image: "tiny" }, createdBy: "bob", createdAt: T, vtimeNs: ID, securityFloor: { kernel: "6.1" },
    spec: {
      version: 1, name: "web", machine: "pc-i440fx-7.2", cpu: "max", vcpus: 1, memoryMiB: 256, image: "tiny",
      boot: { kind: "kernel", kernel: "/c/vmlinuz", initrd: "/c/initrd.img", cmdline: "console=ttyS0" },
      disks: [{ name: "root", backing: "/c/disk.qcow2" }],
      nics: [{ name: "net0", mode: "bridge", network: "lan", mac: "52:54:00:12:34:56" }],
      agent: true, vtime: true,
    },
  },
  disks: [{ name: "root", virtualSize: 67108864, base: { image: "tiny", sha256: "a".repeat(64) } }],
  boot: { image: "tiny", kernelSha256: "b".repeat(64), initrdSha256: "c".repeat(64) },
  nics: [{ nic: "net0", network: "lan", cidr: "10.0.0.0/24", ip: "10.0.0.5", mac: "52:54:00:12:34:56" }],
  generations: [
    { generation: 1, parentGeneration: null, vmgenid: ID, reason: "create", snapshot: null, sourceVmId: null, reseed: null, createdBy: "bob", createdAt: T },
    { generation: 2, parentGeneration: 1, vmgenid: GEN, reason: "revert", snapshot: "s1", sourceVmId: null, reseed: "seen", createdBy: "bob", createdAt: T },
  ],
  firewall: { versions: [{ version: 1, policy: { rules: [], defaults: { in: "drop", out: "accept" } }, actor: "bob", createdAt: T }], quarantine: null },
  vtime: { counters: [{ name: "boots", value: 3, lastRid: "r1", updatedAt: T }], records: [{ stream: "log", seq: 1, data: "x", rid: null, time: T }] },
  watch: { intervalMs: 1000, policy: "alert", guestViewEvery: 1, noNewModules: false, startedBy: "ada", startedAt: T },
  locations: [{ host: "host-a", path: "/var/lib/vigil/vms/x", since: T, until: null }],
});

/** Every path to a value inside `v` (objects and arrays walked), for picking one to replace. */
function paths(v: unknown, at: Array<string | number> = []): Array<Array<string | number>> {
  const out: Array<Array<string | number>> = [at];
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...paths(x, [...at, i])));
  else if (v !== null && typeof v === "object") for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...at, k]));
  return out;
}

function replaced(root: unknown, path: Array<string | number>, value: unknown): unknown {
  if (path.length === 0) return value;
  const copy = structuredClone(root) as Record<string | number, unknown>;
  let cur = copy;
  for (const k of path.slice(0, -1)) cur = cur[k] as Record<string | number, unknown>;
  cur[path.at(-1)!] = value;
  return copy;
}

const parse = (input: unknown) => parseOrThrow(dossierSchema, input, "dossier", "VIGIL_BAD_REQUEST");

function refusedOrValid(input: unknown, atRoot: boolean): void {
  try {
    const d = parse(input);
    // Accepted: then its own invariants hold.
    assert.equal(d.vm.spec.name, d.vm.name);
    assert.equal(d.disks.length, d.vm.spec.disks.length);
    assert.ok(d.generations.some((g) => g.generation === d.vm.generation));
  } catch (err) {
    if (!(err instanceof VigilError)) throw err;
    assert.equal(err.code, "VIGIL_BAD_REQUEST");
    // Named, unless the whole document is what is wrong.
    if (!atRoot) assert.equal(typeof err.field, "string", err.message);
  }
}

test("the fixture is a valid dossier", () => {
  assert.doesNotThrow(() => parse(valid()));
});

test("arbitrary JSON is refused with a VigilError, never a crash", () => {
  fc.assert(fc.property(fc.jsonValue(), (v) => assert.throws(() => parse(v), VigilError)), { numRuns: 300 });
});

test("a valid dossier with any one value replaced by anything is accepted consistently or refused naming a field", () => {
  const base = valid();
  const all = paths(base);
  fc.assert(
    fc.property(fc.integer({ min: 0, max: all.length - 1 }), fc.oneof(fc.jsonValue(), fc.string({ maxLength: 5000 }), fc.constantFrom(-1, 1e300, "", "../../etc/shadow", "/x,file=/etc/shadow", null)), (i, value) => {
      refusedOrValid(replaced(base, all[i]!, value), all[i]!.length === 0);
    }),
    { numRuns: 1000 },
  );
});
