/**
 * The HTTP API without QEMU: the authorization matrix over every route in the OpenAPI document × every kind of
 * actor, response bodies checked against the route's own schemas, the checked-in OpenAPI document, and the
 * 401/403 behaviour the audit log must record.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { generateKeyPairSync } from "node:crypto";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import type { z } from "zod";
import { startDaemon, type Daemon } from "../daemon/daemon.ts";
import { pino } from "pino";
import { Writable } from "node:stream";
import { silentLogger, type Logger } from "../log.ts";
import { resolveSpec, createVmRequestSchema } from "../vm/spec.ts";
import type { VmRepository } from "../vm/vm-repository.ts";
import type { HostFacts } from "../vm/host-limits.ts";
import { openApiDocument } from "./app.ts";
import { ErrorSchema } from "./schemas.ts";

type Actor = "admin" | "operator" | "vmOwner" | "ownerCarol" | "auditor" | "auditorOwner" | "noRoles" | "anonymous";
const ACTORS: Actor[] = ["admin", "operator", "vmOwner", "ownerCarol", "auditor", "auditorOwner", "noRoles", "anonymous"];
const AUTHENTICATED: Actor[] = ACTORS.filter((a) => a !== "anonymous");
/** Who may read the VM "target" (the rest are told it does not exist). */
const READS_TARGET: Actor[] = ["admin", "operator", "vmOwner", "auditor", "auditorOwner"];

/**
 * Who may call each route. Written out by hand — not derived from the permission code — so a change to either
 * shows up here. VM routes act on VM "target", owned by `vmOwner`: user bob in one pass, group "devs" (of which
 * frank is the one member) in the other. User routes act on user "dave". `auditorOwner` (eve: auditor and
 * owner, owning nothing here) may do what an auditor or an owner of nothing may do: it is added below.
 */
const MATRIX: Record<string, Actor[]> = {
  "GET /v1/health": ACTORS,
  "GET /openapi.json": ACTORS,
  "GET /v1/whoami": AUTHENTICATED,
  "GET /v1/events": AUTHENTICATED,
  "GET /v1/host": ["admin", "operator", "auditor"],
  "GET /v1/images": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "POST /v1/images": ["admin"],
  "DELETE /v1/images/{image}": ["admin"],
  "GET /v1/audit": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"], // each sees the records it may read (mayReadRecord)
  "GET /v1/audit/verify": ["admin", "auditor"],
  "GET /v1/audit/export": ["admin", "auditor"],
  "GET /v1/audit/head": ["admin", "auditor"],
  "GET /v1/audit/proof/{seq}": ["admin", "auditor"],
  "GET /v1/audit/consistency": ["admin", "auditor"],
  "GET /v1/vms": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "POST /v1/vms": ["admin", "operator", "vmOwner", "ownerCarol"],
  "GET /v1/vms/{name}": ["admin", "operator", "vmOwner", "auditor"],
  "DELETE /v1/vms/{name}": ["admin", "vmOwner"],
  "POST /v1/vms/{name}/start": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/stop": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/kill": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/pause": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/resume": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/restart": ["admin", "operator", "vmOwner"],
  "GET /v1/vms/{name}/qemu-command": ["admin", "operator", "vmOwner", "auditor"],
  "GET /v1/vms/{name}/console-log": ["admin", "operator", "vmOwner"], // the transcript of the console: vm.console
  "GET /v1/vms/{name}/console": ["admin", "operator", "vmOwner"],
  "GET /v1/vms/{name}/guest/ps": ["admin", "operator", "vmOwner", "auditor"],
  "GET /v1/vms/{name}/guest/info": ["admin", "operator", "vmOwner", "auditor"],
  "POST /v1/vms/{name}/guest/ping": ["admin", "operator", "vmOwner", "auditor"],
  "POST /v1/vms/{name}/guest/exec": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/chown": ["admin", "vmOwner"],
  "GET /v1/vms/{name}/history": ["admin", "operator", "vmOwner", "auditor"],
  "GET /v1/vms/{name}/where": ["admin", "operator", "vmOwner", "auditor"],
  "POST /v1/vms/{name}/purge": ["admin", "vmOwner"],
  "POST /v1/vms/{name}/snapshots": ["admin", "operator", "vmOwner"],
  "GET /v1/vms/{name}/snapshots": ["admin", "operator", "vmOwner", "auditor"],
  "DELETE /v1/vms/{name}/snapshots/{snapshot}": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/snapshots/{snapshot}/revert": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/template": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/clone": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/export": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/import": ["admin", "operator", "vmOwner", "ownerCarol"],
  "GET /v1/vms/{name}/generations": ["admin", "operator", "vmOwner", "auditor"],
  "GET /v1/vms/{name}/vtime": ["admin", "operator", "vmOwner", "auditor"],
  "PUT /v1/vms/{name}/floor": ["admin", "operator", "vmOwner"],
  "POST /v1/vms/{name}/vtime/link": ["admin", "operator", "vmOwner"],
  // Reading guest memory is never part of a role (a separate per-user grant): no actor here has it.
  "POST /v1/vms/{name}/introspect": [],
  "GET /v1/vms/{name}/findings": [],
  "PUT /v1/vms/{name}/watch": [],
  "DELETE /v1/vms/{name}/watch": [],
  "GET /v1/watches": [],
  "GET /v1/networks": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "GET /v1/networks/{name}": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "POST /v1/networks": ["admin"],
  "DELETE /v1/networks/{name}": ["admin"],
  "GET /v1/vms/{name}/firewall": ["admin", "operator", "vmOwner", "auditor"],
  "GET /v1/vms/{name}/firewall/history": ["admin", "operator", "vmOwner", "auditor"],
  "PUT /v1/vms/{name}/firewall": ["admin", "vmOwner"],
  "POST /v1/vms/{name}/firewall/rules": ["admin", "vmOwner"],
  "DELETE /v1/vms/{name}/firewall/rules/{index}": ["admin", "vmOwner"],
  "PATCH /v1/vms/{name}/firewall/defaults": ["admin", "vmOwner"],
  // Quarantine is a security decision, never the owner's alone; quarantine services expose the zone.
  "POST /v1/vms/{name}/quarantine": ["admin"],
  "POST /v1/vms/{name}/release": ["admin"],
  "GET /v1/quarantine/services": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "POST /v1/quarantine/services": ["admin"],
  "DELETE /v1/quarantine/services/{service}": ["admin"],
  // Posture is read like the VM; a gate policy decides who lands in quarantine: the quarantine permission.
  "GET /v1/vms/{name}/posture": ["admin", "operator", "vmOwner", "auditor"],
  "GET /v1/posture/policies": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "GET /v1/posture/stale": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "GET /v1/tasks": AUTHENTICATED,
  "POST /v1/posture/rescan": ["admin"],
  "PUT /v1/posture/policies/{scope}": ["admin"],
  // A scan is an owner's to run on their VM; the data it compares against is a security decision.
  "POST /v1/vms/{name}/scan": ["admin", "operator", "vmOwner"],
  // Recording starts the VM (vm.control); a recording is read like its VM, replayed like its console, bisected like
  // its introspection, deleted and exported like the VM itself. The fixture's recording does not exist: whoever may
  // read some VM is told so (404, like a VM's name), whoever may read none is refused (403); the permission of the
  // operation itself is checked on an existing recording (test/integration/recording.test.ts).
  "POST /v1/vms/{name}/record": ["admin", "operator", "vmOwner"],
  "GET /v1/recordings": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "GET /v1/recordings/{recording}": ["admin", "operator", "vmOwner", "auditor"],
  "GET /v1/recordings/{recording}/serial": ["admin", "operator", "vmOwner", "auditor"],
  "POST /v1/recordings/{recording}/replay": ["admin", "operator", "vmOwner", "auditor"],
  "POST /v1/recordings/{recording}/bisect": ["admin", "operator", "vmOwner", "auditor"],
  "DELETE /v1/recordings/{recording}": ["admin", "operator", "vmOwner", "auditor"],
  "POST /v1/recordings/{recording}/export": ["admin", "operator", "vmOwner", "auditor"],
  "PUT /v1/posture/advisories": ["admin"],
  "PUT /v1/posture/rules": ["admin"],
  "GET /v1/trust": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "POST /v1/trust": ["admin"],
  "DELETE /v1/trust/{keyId}": ["admin"],
  "GET /v1/users": ["admin", "auditor"],
  "POST /v1/users": ["admin"],
  "PATCH /v1/users/{name}": ["admin"],
  "POST /v1/users/{name}/tokens": ["admin"],
  "DELETE /v1/users/{name}/tokens": ["admin"],
  "GET /v1/users/{name}/tokens": ["admin", "auditor"],
  "DELETE /v1/users/{name}/tokens/{id}": ["admin"],
  "GET /v1/groups": ["admin", "auditor"],
  "POST /v1/groups": ["admin"],
  "PUT /v1/groups/{group}/members/{user}": ["admin"],
  "DELETE /v1/groups/{group}/members/{user}": ["admin"],
  // Visibility (docs/network.md): counters need vm.read on the VM and network.read; mirrors, captures' contents
  // and forwards expose traffic: network.manage (admin only).
  "GET /v1/vms/{name}/net/counters": ["admin", "operator", "vmOwner", "auditor"],
  "POST /v1/vms/{name}/net/mirror": ["admin"],
  "POST /v1/vms/{name}/net/mirror-ids": ["admin"],
  "GET /v1/captures": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "GET /v1/captures/{id}": ["admin"],
  "POST /v1/vms/{name}/net/forwards": ["admin"],
  "GET /v1/net/forwards": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
  "DELETE /v1/net/forwards/{id}": ["admin"],
  // A browser's session (docs/web.md): logging in needs no token beforehand (the body carries it).
  "POST /v1/session": ACTORS,
  "GET /v1/session": AUTHENTICATED,
  "DELETE /v1/session": AUTHENTICATED,
  // Metrics: a VM's like the VM; /metrics shows the VMs one may read (host series with host.read): whoever may read some VM.
  "GET /v1/vms/{name}/metrics": ["admin", "operator", "vmOwner", "auditor"],
  "GET /metrics": ["admin", "operator", "vmOwner", "ownerCarol", "auditor"],
};

for (const allowed of Object.values(MATRIX)) if (allowed.includes("auditor") || allowed.includes("ownerCarol")) allowed.push("auditorOwner");
// Not clone: it needs vm.export on the source (a full copy of its data), which auditor + owner lacks (finding 3).

/**
 * What an allowed call gets on the fixture: status and, for refusals after authorization, the error code. The VM
 * "target" is pinned in state `starting`, so control routes reach the state machine and stop there.
 */
const REACHED: Record<string, [number, string?]> = {
  "GET /v1/audit/head": [200],
  "GET /v1/audit/proof/{seq}": [200],
  "GET /v1/audit/consistency": [200],
  "DELETE /v1/groups/{group}/members/{user}": [200],
  "DELETE /v1/images/{image}": [404, "VIGIL_IMAGE_NOT_FOUND"],
  "DELETE /v1/networks/{name}": [404, "VIGIL_NOT_FOUND"],
  "GET /v1/networks": [200],
  "GET /v1/networks/{name}": [404, "VIGIL_NOT_FOUND"],
  "POST /v1/networks": [400, "VIGIL_BAD_REQUEST"],
  "DELETE /v1/trust/{keyId}": [404, "VIGIL_NOT_FOUND"],
  "DELETE /v1/users/{name}/tokens": [200],
  "DELETE /v1/users/{name}/tokens/{id}": [404, "VIGIL_NOT_FOUND"],
  "DELETE /v1/vms/{name}": [409, "VIGIL_INVALID_STATE"],
  "DELETE /v1/vms/{name}/snapshots/{snapshot}": [404, "VIGIL_NOT_FOUND"],
  "GET /openapi.json": [200],
  "GET /v1/audit": [200],
  "GET /v1/audit/export": [200],
  "GET /v1/audit/verify": [200],
  "GET /v1/events": [200],
  "GET /v1/groups": [200],
  "GET /v1/health": [200],
  "GET /v1/host": [200],
  "GET /v1/images": [200],
  "GET /v1/trust": [200],
  "GET /v1/users": [200],
  "GET /v1/users/{name}/tokens": [200],
  "GET /v1/vms": [200],
  "GET /v1/vms/{name}": [200],
  "GET /v1/vms/{name}/console": [409, "VIGIL_INVALID_STATE"],
  "GET /v1/vms/{name}/console-log": [200],
  "GET /v1/vms/{name}/generations": [200],
  "GET /v1/vms/{name}/guest/info": [409, "VIGIL_INVALID_STATE"],
  "GET /v1/vms/{name}/guest/ps": [409, "VIGIL_INVALID_STATE"],
  "GET /v1/vms/{name}/history": [200],
  // The fixture's image disk (/d) does not exist, so the jail cannot read its backing chain: the handler was
  // reached and says so, naming the file.
  "GET /v1/vms/{name}/qemu-command": [500, "VIGIL_HOST"],
  "GET /v1/vms/{name}/snapshots": [200],
  "GET /v1/vms/{name}/vtime": [200],
  "GET /v1/vms/{name}/where": [200],
  "GET /v1/whoami": [200],
  "PATCH /v1/users/{name}": [200],
  "POST /v1/groups": [201],
  "POST /v1/images": [400, "VIGIL_BAD_REQUEST"],
  "POST /v1/trust": [201],
  "POST /v1/users": [201],
  "POST /v1/users/{name}/tokens": [201],
  "POST /v1/vms": [404, "VIGIL_IMAGE_NOT_FOUND"],
  "POST /v1/vms/import": [400, "VIGIL_BAD_REQUEST"],
  "POST /v1/vms/{name}/chown": [200],
  "POST /v1/vms/{name}/clone": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/export": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/guest/exec": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/guest/ping": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/kill": [200],
  "POST /v1/vms/{name}/pause": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/purge": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/restart": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/resume": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/snapshots": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/snapshots/{snapshot}/revert": [404, "VIGIL_NOT_FOUND"],
  "POST /v1/vms/{name}/start": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/stop": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/template": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/vtime/link": [400, "VIGIL_BAD_REQUEST"],
  "PUT /v1/groups/{group}/members/{user}": [200],
  "PUT /v1/vms/{name}/floor": [200],
  "GET /v1/vms/{name}/firewall": [200],
  "GET /v1/vms/{name}/firewall/history": [200],
  "PUT /v1/vms/{name}/firewall": [200],
  "POST /v1/vms/{name}/firewall/rules": [200],
  "DELETE /v1/vms/{name}/firewall/rules/{index}": [400, "VIGIL_BAD_REQUEST"],
  "PATCH /v1/vms/{name}/firewall/defaults": [200],
  "POST /v1/vms/{name}/quarantine": [200],
  "POST /v1/vms/{name}/release": [200],
  "GET /v1/quarantine/services": [200],
  "POST /v1/quarantine/services": [200],
  "DELETE /v1/quarantine/services/{service}": [404, "VIGIL_NOT_FOUND"],
  "GET /v1/vms/{name}/posture": [200],
  "GET /v1/posture/policies": [200],
  "GET /v1/posture/stale": [200],
  "GET /v1/tasks": [200],
  "POST /v1/posture/rescan": [200],
  "PUT /v1/posture/policies/{scope}": [200],
  "POST /v1/vms/{name}/scan": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/record": [409, "VIGIL_INVALID_STATE"],
  "GET /v1/recordings": [200],
  "GET /v1/recordings/{recording}": [404, "VIGIL_NOT_FOUND"],
  "GET /v1/recordings/{recording}/serial": [404, "VIGIL_NOT_FOUND"],
  "POST /v1/recordings/{recording}/replay": [404, "VIGIL_NOT_FOUND"],
  "POST /v1/recordings/{recording}/bisect": [404, "VIGIL_NOT_FOUND"],
  "DELETE /v1/recordings/{recording}": [404, "VIGIL_NOT_FOUND"],
  "POST /v1/recordings/{recording}/export": [404, "VIGIL_NOT_FOUND"],
  "PUT /v1/posture/advisories": [404, "VIGIL_NOT_FOUND"],
  "PUT /v1/posture/rules": [400, "VIGIL_BAD_REQUEST"],
  // The fixture has no virtual switch: authorized, then "no plugged-in NIC".
  "GET /v1/vms/{name}/net/counters": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/net/mirror": [409, "VIGIL_INVALID_STATE"],
  "POST /v1/vms/{name}/net/mirror-ids": [409, "VIGIL_INVALID_STATE"],
  "GET /v1/captures": [200],
  "GET /v1/captures/{id}": [404, "VIGIL_NOT_FOUND"],
  "POST /v1/vms/{name}/net/forwards": [409, "VIGIL_INVALID_STATE"],
  "GET /v1/net/forwards": [200],
  "DELETE /v1/net/forwards/{id}": [404, "VIGIL_NOT_FOUND"],
  "POST /v1/session": [400, "VIGIL_BAD_REQUEST"], // the empty body has no token
  "GET /v1/session": [200],
  "DELETE /v1/session": [200],
  "GET /v1/vms/{name}/metrics": [200],
  "GET /metrics": [200],
};

/** Query strings some routes require to get past input validation to the authorization check. */
const QUERY: Record<string, string> = { "POST /v1/images": "?name=matrix&format=raw", "GET /v1/audit/consistency": "?from=0" };

let unique = 0;
/** A request body that is valid and harmless for each route (acts on objects that exist but cannot do damage). */
function bodyFor(key: string): unknown {
  unique++;
  switch (key) {
    case "POST /v1/vms":
      return { name: `new-${unique}`, image: "no-such-image" }; // authorized, then 404: nothing is created
    case "POST /v1/vms/{name}/guest/exec":
      return { argv: ["uname"] };
    case "POST /v1/recordings/{recording}/bisect":
      return { check: "syscall-table" };
    case "POST /v1/vms/{name}/chown":
      return { owner: "user:bob", approver: "dave" };
    case "POST /v1/users":
      return { name: `user${unique}`, roles: [] };
    case "PATCH /v1/users/{name}":
      return { roles: ["owner"] };
    case "POST /v1/groups":
      return { name: `group${unique}` };
    case "POST /v1/vms/{name}/snapshots":
      return { name: `snap${unique}` }; // authorized, then refused: the VM is mid-start
    case "POST /v1/vms/{name}/clone":
      return { name: `clone${unique}` };
    case "PUT /v1/vms/{name}/floor":
      return { facts: { patchLevel: "1" } };
    case "POST /v1/vms/{name}/vtime/link":
      return { source: "target" };
    case "PUT /v1/vms/{name}/firewall":
      return { rules: [], defaults: { in: "drop", out: "accept" } };
    case "POST /v1/vms/{name}/firewall/rules":
      return { rule: { direction: "in", action: "accept", proto: "tcp", ports: "22" } };
    case "PATCH /v1/vms/{name}/firewall/defaults":
      return { in: "drop" };
    case "POST /v1/vms/{name}/quarantine":
      return { reason: "matrix" };
    case "PUT /v1/posture/advisories":
      return { from: "/nonexistent/matrix" }; // authorized, then refused: nothing is loaded or recorded
    case "PUT /v1/posture/rules":
      return { rules: "rule x { condition: $undefined }" }; // authorized, then refused by the compiler
    case "PUT /v1/posture/policies/{scope}":
      return { gate: false, maxScanAgeDays: 7, vulnerableAt: "high" };
    case "POST /v1/quarantine/services":
      return { name: `svc${unique}`, ip: "10.77.0.1", port: 8443 };
    case "PUT /v1/vms/{name}/watch":
      return { intervalMs: 1000 };
    case "POST /v1/networks":
      return { name: "Not_A_Name", cidr: "10.250.0.0/24" }; // authorized, then refused by name: no netns is made
    case "POST /v1/vms/{name}/net/mirror":
      return { durationMs: 1000 };
    case "POST /v1/vms/{name}/net/mirror-ids":
      return { durationMs: 1000, toIds: "ids0" };
    case "POST /v1/vms/{name}/net/forwards":
      return { guestPort: 80, listen: "127.0.0.1:1" };
    case "POST /v1/images":
      return undefined; // query-string only; an empty body is refused after authorization
    case "POST /v1/trust":
      return { name: `site${unique}`, publicKey: generateKeyPairSync("ed25519").publicKey.export({ type: "spki", format: "pem" }).toString() };
    default:
      return key.startsWith("POST") || key.startsWith("PATCH") ? {} : undefined;
  }
}

type TokenKey = Exclude<Actor, "anonymous" | "vmOwner"> | "ownerBob" | "groupMember";

interface Fixture {
  daemon: Daemon;
  tokens: Record<TokenKey, string>;
  repo: VmRepository;
  targetId: string;
}

async function fixture(t: TestContext, log: Logger = silentLogger(), hostFacts?: () => HostFacts): Promise<Fixture> {
  const home = mkdtempSync(join(tmpdir(), "vigil-api-"));
  const daemon = await startDaemon({ home, cache: join(home, "no-cache"), listen: "none", log, ...(hostFacts ? { hostFacts } : {}) });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const users = daemon.deps.users;
  const roles: Record<TokenKey, Parameters<typeof users.create>[0]["roles"]> = {
    admin: ["admin"],
    operator: ["operator"],
    ownerBob: ["owner"],
    ownerCarol: ["owner"],
    auditor: ["auditor"],
    auditorOwner: ["auditor", "owner"],
    noRoles: [],
    groupMember: ["owner"],
  };
  const names: Record<string, string> = { ownerBob: "bob", ownerCarol: "carol", auditorOwner: "eve", groupMember: "frank" };
  const tokens = {} as Fixture["tokens"];
  for (const [actor, r] of Object.entries(roles) as Array<[TokenKey, typeof roles.admin]>) {
    const name = names[actor] ?? actor.toLowerCase();
    await users.create({ name, roles: r, introspect: false }, "test");
    tokens[actor] = (await users.issueToken(name, "t")).token;
  }
  await users.create({ name: "dave", roles: ["owner"], introspect: false }, "test");
  await users.createGroup("devs");
  await users.setMembership("devs", "frank", true);
  const repo = daemon.repo;
  const req = createVmRequestSchema.parse({ name: "target" });
  const spec = resolveSpec(req, { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  const now = new Date().toISOString();
  const vm = await repo.insert({ id: crypto.randomUUID(), name: "target", spec, state: "starting", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:bob", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "bob", createdAt: now });
  return { daemon, tokens, repo, targetId: vm.id };
}

function request(f: Fixture, actor: TokenKey | "anonymous", method: string, path: string, body?: unknown, extra: Record<string, string> = {}): Promise<Response> {
  const headers: Record<string, string> = { ...extra };
  if (actor !== "anonymous") headers.authorization = `Bearer ${f.tokens[actor]}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  return Promise.resolve(f.daemon.app.request(path, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) }, { transport: "tcp" }));
}

/** The route's declared success schema, for response validation. */
function responseSchema(f: Fixture, method: string, path: string, status: number): z.ZodType | undefined {
  for (const def of f.daemon.app.openAPIRegistry.definitions) {
    if (def.type !== "route" || def.route.method !== method.toLowerCase() || def.route.path !== path) continue;
    const r = def.route.responses[status] as { content?: Record<string, { schema?: unknown }> } | undefined;
    return r?.content?.["application/json"]?.schema as z.ZodType | undefined;
  }
  return undefined;
}

test("authorization matrix: every route × every actor × user and group ownership, deny by default", async (t) => {
  const f = await fixture(t);
  const doc = openApiDocument(f.daemon.app) as { paths: Record<string, Record<string, { "x-vigil-permission"?: string }>> };
  const routes: string[] = [];
  for (const [path, ops] of Object.entries(doc.paths)) for (const method of Object.keys(ops)) routes.push(`${method.toUpperCase()} ${path}`);
  routes.push("GET /openapi.json");
  const missing = routes.filter((r) => !(r in MATRIX));
  assert.deepEqual(missing, [], "every route needs an entry in MATRIX (decide who may call it)");
  const stale = Object.keys(MATRIX).filter((r) => !routes.includes(r));
  assert.deepEqual(stale, [], "MATRIX lists routes that no longer exist");
  assert.deepEqual(routes.filter((r) => MATRIX[r]!.length > 0 && !(r in REACHED)), [], "every route someone may call needs the answer an allowed call gets in REACHED");

  // Every request also carries the export's output header, aimed at a file that must stay untouched.
  const victim = join(f.daemon.home.home, "victim.txt");
  writeFileSync(victim, "precious\n");

  for (const pass of [{ owner: "user:bob", vmOwner: "ownerBob" }, { owner: "group:devs", vmOwner: "groupMember" }] as const) {
    for (const key of routes) {
      const [method, template] = key.split(" ") as [string, string];
      const path = template
        .replace("{name}", template.startsWith("/v1/users") ? "dave" : "target")
        .replace("{group}", "devs")
        .replace("{user}", "dave")
        .replace("{snapshot}", "no-such-snapshot")
        .replace("{recording}", "no-such-recording")
        .replace("{keyId}", "0000000000000000")
        .replace("{id}", "no-such-token")
        .replace("{image}", "no-such-image")
        .replace("{seq}", "1")
        .replace("{index}", "999")
        .replace("{service}", "no-such-service")
        .replace("{scope}", "vm:target") + (QUERY[key] ?? "");
      for (const actor of ACTORS) {
        await f.repo.update(f.targetId, { state: "starting", owner: pass.owner, pid: null });
        const res = await request(f, actor === "vmOwner" ? pass.vmOwner : actor, method, path, bodyFor(key), { "x-vigil-output": victim });
        const allowed = MATRIX[key]!.includes(actor);
        const what = `${pass.owner}: ${actor} ${key} → ${res.status}`;
        const type = res.headers.get("content-type") ?? "";
        const json = type.includes("application/json") ? ((await res.json()) as { error?: { code: string } }) : undefined;
        if (type.includes("text/event-stream")) await res.body?.cancel();
        else if (!json) await res.arrayBuffer();
        if (allowed) {
          // "Allowed" means the handler ran and gave the answer an allowed call gets — not just "not 401/403".
          const [status, code] = REACHED[key]!;
          assert.equal(res.status, status, `${what} (expected ${status} ${code ?? ""}): ${JSON.stringify(json)}`);
          if (code) assert.equal(json?.error?.code, code, what);
        } else if (actor === "anonymous") {
          assert.equal(res.status, 401, what);
        } else {
          // A VM the actor may not read is answered like a name that does not exist (finding 18).
          const hidden = template.startsWith("/v1/vms/{name}") && !READS_TARGET.includes(actor);
          assert.equal(res.status, hidden ? 404 : 403, what);
          assert.equal(json?.error?.code, hidden ? "VIGIL_VM_NOT_FOUND" : "VIGIL_FORBIDDEN", what);
          const [last] = await f.daemon.deps.audit.list({ tail: true, limit: 1 });
          assert.equal(last?.requestId, res.headers.get("x-request-id"), `${what}: the refusal is the last audit record`);
          assert.equal(last?.result, "denied", what);
        }
        if (json && template !== "/openapi.json") {
          const schema = res.ok ? responseSchema(f, method, template, res.status) : ErrorSchema;
          assert.ok(schema, `${what}: no schema declared for status ${res.status}`);
          const parsed = schema.safeParse(json);
          assert.ok(parsed.success, `${what}: body does not match its schema: ${JSON.stringify(parsed.error?.issues[0])}`);
        }
      }
    }
  }
  assert.equal(readFileSync(victim, "utf8"), "precious\n");
  const registered = await f.daemon.deps.provenance.where({ actor: { userId: "x", name: "admin", roles: ["admin"], introspect: false, groups: [], via: "unix" }, requestId: "t" }, "target");
  assert.ok(![...registered.live, ...registered.removed].some((x) => x.path === victim), "the output header registered a client path as VM data");
});

test("denials are audited with who, what and the permission missing", async (t) => {
  const f = await fixture(t);
  const res = await request(f, "auditor", "POST", "/v1/vms/target/start", {});
  assert.equal(res.status, 403);
  const body = (await res.json()) as { error: { code: string; message: string } };
  assert.equal(body.error.code, "VIGIL_FORBIDDEN");
  assert.match(body.error.message, /user "auditor" may not vm.start on vm "target" \(needs vm.control\)/);
  const [last] = await f.daemon.deps.audit.list({ tail: true, limit: 1 });
  assert.equal(last?.result, "denied");
  assert.equal(last?.actor, "auditor");
  assert.equal(last?.action, "vm.start");
  assert.equal(last?.target.name, "target");
  assert.equal(last?.requestId, res.headers.get("x-request-id"));
});

test("without a token every route but health and the OpenAPI document is 401", async (t) => {
  const f = await fixture(t);
  assert.equal((await request(f, "anonymous", "GET", "/v1/health")).status, 200);
  assert.equal((await request(f, "anonymous", "GET", "/openapi.json")).status, 200);
  const res = await request(f, "anonymous", "GET", "/v1/vms");
  assert.equal(res.status, 401);
  assert.deepEqual(Object.keys(((await res.json()) as { error: object }).error).sort(), ["code", "message"]);
  const forged = await f.daemon.app.request("/v1/vms", { headers: { authorization: "Bearer vgl_forged" } }, { transport: "tcp" });
  assert.equal(forged.status, 401);
});

test("an owner sees only the VMs it owns", async (t) => {
  const f = await fixture(t);
  const mine = (await (await request(f, "ownerBob", "GET", "/v1/vms")).json()) as { vms: Array<{ name: string }> };
  const theirs = (await (await request(f, "ownerCarol", "GET", "/v1/vms")).json()) as { vms: unknown[] };
  assert.deepEqual(mine.vms.map((v) => v.name), ["target"]);
  assert.deepEqual(theirs.vms, []);
});

test("view=summary lists the same VMs with only the inventory's fields; a bad view is a 400 naming it", async (t) => {
  const f = await fixture(t);
  const full = (await (await request(f, "ownerBob", "GET", "/v1/vms")).json()) as { vms: Array<Record<string, unknown>> };
  const res = await request(f, "ownerBob", "GET", "/v1/vms?view=summary");
  assert.equal(res.status, 200);
  const summary = (await res.json()) as { vms: Array<Record<string, unknown>> };
  assert.deepEqual(summary.vms.map((v) => v.name), full.vms.map((v) => v.name));
  const [s, v] = [summary.vms[0]!, full.vms[0]!];
  assert.deepEqual(Object.keys(s).sort(), ["expired", "expiresAt", "generation", "host", "id", "labels", "memoryMiB", "name", "owner", "posture", "purpose", "state", "stateChangedAt", "template", "vcpus"]);
  for (const k of ["id", "state", "host", "owner", "purpose", "expiresAt", "expired", "labels", "template", "generation", "posture"]) assert.deepEqual(s[k], v[k], k);
  assert.equal(s.memoryMiB, (v.spec as { memoryMiB: number }).memoryMiB);
  assert.equal((await (await request(f, "ownerCarol", "GET", "/v1/vms?view=summary")).json() as { vms: unknown[] }).vms.length, 0, "still only what the caller may read");
  const bad = await request(f, "ownerBob", "GET", "/v1/vms?view=everything");
  assert.equal(bad.status, 400);
  assert.equal(((await bad.json()) as { error: { field?: string } }).error.field, "view");
});

test("bad input is a 400 naming the field, never a stack trace", async (t) => {
  const f = await fixture(t);
  const res = await request(f, "admin", "POST", "/v1/vms", { name: "x", memoryMiB: "lots" });
  assert.equal(res.status, 400);
  const body = (await res.json()) as { error: { code: string; message: string; field: string } };
  assert.equal(body.error.field, "memoryMiB");
  assert.doesNotMatch(body.error.message, /at .*\.ts:\d+/);
});

test("a body that is not JSON is a 400 and a non-JSON Content-Type a 415, logged without a stack", async (t) => {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  const f = await fixture(t, pino({ level: "info" }, sink));
  const send = (type: string, body: string) => f.daemon.app.request("/v1/vms", { method: "POST", headers: { authorization: `Bearer ${f.tokens.admin}`, "content-type": type }, body }, { transport: "tcp" });

  const bad = await send("application/json", "{bad");
  assert.equal(bad.status, 400);
  const badBody = (await bad.json()) as { error: { code: string; message: string } };
  assert.equal(badBody.error.code, "VIGIL_BAD_REQUEST");
  assert.match(badBody.error.message, /the request body is not valid JSON/);

  const plain = await send("text/plain", JSON.stringify({ name: "x" }));
  assert.equal(plain.status, 415);
  const plainBody = (await plain.json()) as { error: { code: string; message: string } };
  assert.equal(plainBody.error.code, "VIGIL_UNSUPPORTED_MEDIA_TYPE");
  assert.match(plainBody.error.message, /"text\/plain".*application\/json/);
  assert.ok(ErrorSchema.safeParse(plainBody).success);

  const refusals = lines.filter((l) => l.code === "VIGIL_BAD_REQUEST" || l.code === "VIGIL_UNSUPPORTED_MEDIA_TYPE");
  assert.equal(refusals.length, 2);
  for (const l of lines) {
    assert.ok(Number(l.level) <= 40, `logged above warn: ${JSON.stringify(l)}`);
    assert.equal(l.err, undefined, `logged with an error object: ${JSON.stringify(l)}`);
  }
});

test("a VM may not have more memory than the host, at create and at start", async (t) => {
  const f = await fixture(t, silentLogger(), () => ({ memTotalMiB: 1024 }));
  const res = await request(f, "admin", "POST", "/v1/vms", { name: "big", memoryMiB: 1000000 });
  assert.equal(res.status, 400);
  const body = (await res.json()) as { error: { code: string; message: string; field: string } };
  assert.equal(body.error.code, "VIGIL_INVALID_SPEC");
  assert.equal(body.error.field, "memoryMiB");
  assert.match(body.error.message, /"memoryMiB" 1000000 is more than this host's memory \(at most 1024 MiB\)/);

  // A VM created on a bigger host: refused at start on this one, and left as it was.
  const req = createVmRequestSchema.parse({ name: "moved", memoryMiB: 2048 });
  const spec = resolveSpec(req, { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  await f.repo.insert({ id: crypto.randomUUID(), name: "moved", spec, state: "stopped", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:admin", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "admin", createdAt: new Date().toISOString() });
  const start = await request(f, "admin", "POST", "/v1/vms/moved/start", {});
  assert.equal(start.status, 400);
  const startBody = (await start.json()) as { error: { message: string; field: string } };
  assert.equal(startBody.error.field, "memoryMiB");
  assert.match(startBody.error.message, /Cannot start VM "moved": "memoryMiB" 2048 is more than this host's memory \(at most 1024 MiB\)/);
  assert.equal((await f.repo.getByName("moved")).state, "stopped");
});

test("the OpenAPI document is checked in at docs/openapi.json and current", async (t) => {
  const f = await fixture(t);
  const path = join(import.meta.dirname, "..", "..", "docs", "openapi.json");
  const current = JSON.stringify(openApiDocument(f.daemon.app), null, 2) + "\n";
  if (process.env.VIGIL_UPDATE_GOLDEN === "1") writeFileSync(path, current);
  assert.equal(readFileSync(path, "utf8"), current, "run with VIGIL_UPDATE_GOLDEN=1 to refresh docs/openapi.json");
  const served = await (await request(f, "anonymous", "GET", "/openapi.json")).json();
  assert.deepEqual(served, JSON.parse(current));
});

test("the events stream delivers audit records as they happen, only to those who may read them", async (t) => {
  const f = await fixture(t);
  const read = async (actor: TokenKey, trigger: () => Promise<unknown>): Promise<string> => {
    const res = await request(f, actor, "GET", "/v1/events");
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    let text = "";
    const deadline = Date.now() + 3000;
    let triggered = false;
    while (Date.now() < deadline && !/event: audit/.test(text)) {
      if (!triggered && text.includes("event: hello")) {
        triggered = true;
        await trigger();
      }
      const next = await Promise.race([reader.read(), new Promise<{ done: true; value: undefined }>((r) => setTimeout(() => r({ done: true, value: undefined }), 500))]);
      if (next.value) text += new TextDecoder().decode(next.value);
    }
    await reader.cancel();
    return text;
  };
  const seen = await read("auditor", () => request(f, "ownerCarol", "POST", "/v1/vms/target/start", {}));
  assert.match(seen, /event: audit\ndata: .*"actor":"carol".*"result":"denied".*\nid: \d+/);
  // Carol may not read bob's VM, so she is not told about events on it.
  const carol = await read("ownerCarol", () => request(f, "auditor", "POST", "/v1/vms/target/start", {}));
  assert.doesNotMatch(carol, /event: audit/);
});

test("a revert with a reason but without force is a 400 naming \"reason\"", async (t) => {
  const f = await fixture(t);
  await f.repo.update(f.targetId, { state: "stopped" });
  const res = await request(f, "admin", "POST", "/v1/vms/target/snapshots/s1/revert", { reason: "because" });
  assert.equal(res.status, 400);
  const body = (await res.json()) as { error: { code: string; message: string; field: string } };
  assert.equal(body.error.field, "reason");
  assert.match(body.error.message, /"reason" is only accepted with "force"/);
});

test("vtime link: linking a VM to itself says whose store it really shares; linking elsewhere relinks", async (t) => {
  const f = await fixture(t);
  const spec = resolveSpec(createVmRequestSchema.parse({ name: "a" }), { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  const ids: Record<string, string> = {};
  for (const name of ["a", "c"]) {
    const vm = await f.repo.insert({ id: crypto.randomUUID(), name, spec: { ...spec, name }, state: "stopped", host: "h", vmgenid: crypto.randomUUID(), generation: 1, owner: "user:bob", approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "bob", createdAt: new Date().toISOString() });
    ids[name] = vm.id;
  }
  const link = async (vm: string, source: string) => {
    const res = await request(f, "admin", "POST", `/v1/vms/${vm}/vtime/link`, { source });
    return { status: res.status, json: (await res.json()) as { namespace?: string; error?: { message: string; field: string } } };
  };
  const own = await link("a", "a");
  assert.equal(own.status, 400);
  assert.equal(own.json.error?.message, 'Cannot link VM "a" to itself: it uses its own store already');
  assert.equal((await link("a", "c")).json.namespace, ids.c);
  const self = await link("a", "a");
  assert.equal(self.status, 400);
  assert.equal(self.json.error?.field, "source");
  assert.match(self.json.error!.message, /^Cannot link VM "a" to itself: it already shares the store of "c"/);
  assert.doesNotMatch(self.json.error!.message, /its own store/);
  // Linking a VM that shares one store to another VM moves it to that one's store.
  const moved = await link("a", "target");
  assert.equal(moved.status, 200);
  assert.equal(moved.json.namespace, f.targetId);
});

test("removing a user from a group they are not in is a 409 that says so", async (t) => {
  const f = await fixture(t);
  const res = await request(f, "admin", "DELETE", "/v1/groups/devs/members/dave");
  assert.equal(res.status, 409);
  const body = (await res.json()) as { error: { message: string; field: string } };
  assert.equal(body.error.message, 'Cannot remove user "dave" from group "devs": not a member');
  assert.equal((await request(f, "admin", "PUT", "/v1/groups/devs/members/dave")).status, 200);
  assert.equal((await request(f, "admin", "DELETE", "/v1/groups/devs/members/dave")).status, 200);
});

test("a token minted with an expiring token expires no later; revoking a token revokes what was minted with it", async (t) => {
  const f = await fixture(t);
  const expires = new Date(Date.now() + 3600_000).toISOString();
  const parent = await f.daemon.deps.users.issueToken("bob", "short", expires);
  const asParent = (method: string, path: string, body?: unknown) =>
    Promise.resolve(f.daemon.app.request(path, { method, headers: { authorization: `Bearer ${parent.token}`, ...(body !== undefined ? { "content-type": "application/json" } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) }, { transport: "tcp" }));
  const child = (await (await asParent("POST", "/v1/users/bob/tokens", {})).json()) as { id: string; token: string; expiresAt: string | null };
  assert.equal(child.expiresAt, expires, "a token minted without an expiry inherits its parent's");
  const later = await asParent("POST", "/v1/users/bob/tokens", { expiresAt: new Date(Date.now() + 7200_000).toISOString() });
  assert.equal(later.status, 400);
  const laterBody = (await later.json()) as { error: { field: string; message: string } };
  assert.equal(laterBody.error.field, "expiresAt");
  assert.match(laterBody.error.message, /a token may not outlive the one it was made with/);

  const list = (await (await asParent("GET", "/v1/users/bob/tokens")).json()) as { tokens: Array<{ id: string; parentId: string | null; revoked: boolean }> };
  assert.equal(list.tokens.find((x) => x.id === child.id)?.parentId, parent.id);
  assert.ok(list.tokens.every((x) => !("token" in x) && !("hash" in x)), "no secret or hash in the list");

  // Another owner may neither list nor revoke bob's tokens.
  assert.equal((await request(f, "ownerCarol", "GET", "/v1/users/bob/tokens")).status, 403);
  assert.equal((await request(f, "ownerCarol", "DELETE", `/v1/users/bob/tokens/${parent.id}`)).status, 403);

  const revoked = await request(f, "ownerBob", "DELETE", `/v1/users/bob/tokens/${parent.id}`);
  assert.equal(revoked.status, 200);
  assert.deepEqual(await revoked.json(), { revoked: 2 });
  const childCall = await f.daemon.app.request("/v1/whoami", { headers: { authorization: `Bearer ${child.token}` } }, { transport: "tcp" });
  assert.equal(childCall.status, 401);
  assert.equal((await request(f, "ownerBob", "GET", "/v1/whoami")).status, 200, "bob's other tokens still work");
  assert.equal((await request(f, "ownerBob", "DELETE", "/v1/users/bob/tokens/no-such")).status, 404);
});

test("only a holder of the introspection grant may give it: an admin cannot grant it to itself or reach it through another account", async (t) => {
  const f = await fixture(t);
  const self = await request(f, "admin", "PATCH", "/v1/users/admin", { introspect: true });
  assert.equal(self.status, 403);
  assert.match(((await self.json()) as { error: { message: string } }).error.message, /needs vm.introspect/);
  const [last] = await f.daemon.deps.audit.list({ tail: true, limit: 1 });
  assert.deepEqual([last?.action, last?.result, last?.details?.permission], ["user.update", "denied", "vm.introspect"]);
  assert.equal((await f.daemon.deps.users.get("admin")).introspect, false);

  assert.equal((await request(f, "admin", "POST", "/v1/users", { name: "sock", introspect: true })).status, 403);
  assert.equal((await f.daemon.deps.users.findByName("sock")), undefined);

  // The host's own user (the unix socket) holds the grant and may give it to someone else.
  const local = (method: string, path: string, body: unknown) => Promise.resolve(f.daemon.app.request(path, { method, headers: { "content-type": "application/json" }, body: JSON.stringify(body) }, { transport: "unix" }));
  assert.equal((await local("PATCH", "/v1/users/dave", { introspect: true })).status, 200);
  // An admin without it may not mint a token for an account that has it.
  const token = await request(f, "admin", "POST", "/v1/users/dave/tokens", {});
  assert.equal(token.status, 403);
  assert.equal((await request(f, "admin", "PATCH", "/v1/users/operator", { introspect: false })).status, 200, "taking it away needs no grant");
});

test("refusals decided beyond the VM's own permission are the Guard's: audited as denied, naming the permission", async (t) => {
  const f = await fixture(t);
  await f.repo.update(f.targetId, { state: "stopped" });
  const last = async () => (await f.daemon.deps.audit.list({ tail: true, limit: 1 }))[0];
  // An auditor may read the source but not create a VM.
  const clone = await request(f, "auditor", "POST", "/v1/vms/target/clone", { name: "copy" });
  assert.equal(clone.status, 403);
  assert.deepEqual([(await last())?.action, (await last())?.result, (await last())?.details?.permission], ["vm.clone", "denied", "vm.create"]);
  // An owner may create VMs for itself or its groups; for anyone else it needs vm.chown on every VM.
  const forOther = await request(f, "ownerCarol", "POST", "/v1/vms", { name: "forbob", owner: "user:bob" });
  assert.equal(forOther.status, 403);
  assert.deepEqual([(await last())?.action, (await last())?.result, (await last())?.details?.permission], ["vm.create", "denied", "vm.chown"]);
  assert.equal((await request(f, "groupMember", "POST", "/v1/vms", { name: "fordevs", owner: "group:devs", image: "no-such-image" })).status, 404, "for its own group it is allowed (then the image is missing)");
  // Keeping the vmgenid on a revert is for admins only.
  const unsafe = await request(f, "ownerBob", "POST", "/v1/vms/target/snapshots/s1/revert", { unsafeKeepVmgenid: true });
  assert.equal(unsafe.status, 403);
  assert.deepEqual([(await last())?.action, (await last())?.result, (await last())?.details?.permission], ["snapshot.revert", "denied", "vm.unsafe"]);
  assert.equal((await request(f, "admin", "POST", "/v1/vms/target/snapshots/s1/revert", { unsafeKeepVmgenid: true })).status, 404, "an admin gets past it (to the missing snapshot)");
});

test("a VM the caller may not read is answered exactly like a name that does not exist, and both are audited as denied", async (t) => {
  const f = await fixture(t);
  for (const [method, suffix] of [["GET", ""], ["POST", "/start"], ["GET", "/history"], ["POST", "/snapshots"]] as const) {
    const body = method === "POST" ? (suffix === "/snapshots" ? { name: "s" } : {}) : undefined;
    const theirs = await request(f, "ownerCarol", method, `/v1/vms/target${suffix}`, body);
    const [hidden] = await f.daemon.deps.audit.list({ tail: true, limit: 1 });
    const none = await request(f, "ownerCarol", method, `/v1/vms/nosuchvm${suffix}`, body);
    const [missing] = await f.daemon.deps.audit.list({ tail: true, limit: 1 });
    assert.equal(theirs.status, 404, `${method} ${suffix}`);
    const a = (await theirs.json()) as { error: { message: string } };
    const b = (await none.json()) as { error: { message: string } };
    assert.deepEqual([none.status, b.error.message.replace("nosuchvm", "target")], [404, a.error.message], `${method} ${suffix}: same answer`);
    for (const r of [hidden, missing]) assert.deepEqual([r?.actor, r?.result, r?.details?.permission], ["carol", "denied", "vm.read"]);
    assert.equal(hidden?.requestId, theirs.headers.get("x-request-id"));
  }
  // Someone who may read every VM just gets the 404 for a missing name.
  assert.equal((await request(f, "auditor", "GET", "/v1/vms/nosuchvm")).status, 404);
});

test("an approver must be an existing user other than the requester; the console transcript needs vm.console", async (t) => {
  const f = await fixture(t);
  for (const [approver, why] of [["nobody", /approver "nobody" is not a user of this site/], ["carol", /approver "carol" is the requester; someone else must approve/]] as const) {
    const create = await request(f, "ownerCarol", "POST", "/v1/vms", { name: "x", approver });
    assert.equal(create.status, 400);
    const body = (await create.json()) as { error: { field: string; message: string } };
    assert.equal(body.error.field, "approver");
    assert.match(body.error.message, why);
  }
  assert.equal((await request(f, "ownerCarol", "POST", "/v1/vms", { name: "x", approver: "dave", image: "no-such-image" })).status, 404, "a real approver gets past (to the missing image)");
  const chown = await request(f, "ownerBob", "POST", "/v1/vms/target/chown", { owner: "user:carol", approver: "bob" });
  assert.equal(chown.status, 400);
  assert.equal(((await chown.json()) as { error: { field: string } }).error.field, "approver");
  assert.equal((await f.repo.getByName("target")).owner, "user:bob");
  await f.daemon.deps.users.update("dave", { disabled: true });
  assert.equal((await request(f, "ownerBob", "POST", "/v1/vms/target/chown", { owner: "user:carol", approver: "dave" })).status, 400, "a disabled user approves nothing");

  const log = await request(f, "auditor", "GET", "/v1/vms/target/console-log");
  assert.equal(log.status, 403);
  assert.match(((await log.json()) as { error: { message: string } }).error.message, /needs vm.console/);
});

test("quotas: per-owner VM count and disk at create, memory at start, per-user overrides, and the host's memory over every owner", async (t) => {
  const home = mkdtempSync(join(tmpdir(), "vigil-api-"));
  writeFileSync(join(home, "config.json"), JSON.stringify({ quotas: { vms: 2, diskMiB: 100, memoryMiB: 2000 } }));
  const daemon = await startDaemon({ home, listen: "none", log: silentLogger(), hostFacts: () => ({ memTotalMiB: 2048 }) });
  t.after(async () => {
    await daemon.close();
    rmSync(home, { recursive: true, force: true });
  });
  const users = daemon.deps.users;
  const tok: Record<string, string> = {};
  for (const [name, roles] of [["carol", ["owner"]], ["frank", ["owner"]], ["boss", ["admin"]]] as const) {
    await users.create({ name, roles: [...roles], introspect: false }, "test");
    tok[name] = (await users.issueToken(name, "t")).token;
  }
  const call = async (who: string, method: string, path: string, body?: unknown) => {
    const res = await daemon.app.request(path, { method, headers: { authorization: `Bearer ${tok[who]}`, "content-type": "application/json" }, body: JSON.stringify(body ?? {}) }, { transport: "tcp" });
    return { status: res.status, json: (await res.json()) as { error?: { code: string; field: string; message: string } } };
  };
  assert.equal((await call("carol", "POST", "/v1/vms", { name: "a", memoryMiB: 128, disks: [{ name: "d", sizeMiB: 64 }] })).status, 201);
  const disk = await call("carol", "POST", "/v1/vms", { name: "b", disks: [{ name: "d", sizeMiB: 64 }] });
  assert.deepEqual([disk.status, disk.json.error?.code, disk.json.error?.field], [422, "VIGIL_POLICY_DENIED", "quotas.diskMiB"]);
  assert.match(disk.json.error!.message, /^Cannot create VM "b": owner "user:carol" would exceed its disk quota "quotas.diskMiB" \(64 MiB in use \+ 64 MiB > 100 MiB\)/);
  assert.equal((await call("carol", "POST", "/v1/vms", { name: "b" })).status, 201);
  const count = await call("carol", "POST", "/v1/vms", { name: "c" });
  assert.deepEqual([count.status, count.json.error?.field], [422, "quotas.vms"]);
  assert.equal(await daemon.repo.findByName("c"), undefined, "a refused VM leaves nothing");
  assert.equal(existsSync(join(home, "vms")) ? readdirSync(join(home, "vms")).length : 0, 2);
  // Frank has his own allowance.
  assert.equal((await call("frank", "POST", "/v1/vms", { name: "f1" })).status, 201);

  // An admin gives carol more VMs but less memory than the site default.
  const set = await call("boss", "PATCH", "/v1/users/carol", { quotas: { vms: 3, memoryMiB: 1024 } });
  assert.equal(set.status, 200);
  assert.equal((await call("carol", "POST", "/v1/vms", { name: "c" })).status, 201);

  const spec = (name: string, memoryMiB: number) => resolveSpec(createVmRequestSchema.parse({ name, memoryMiB }), { name: "tiny", boot: { kind: "kernel", kernel: "/k", initrd: "/i", cmdline: "" }, disk: "/d" }, { cpu: "max" });
  const put = (name: string, owner: string, state: "running" | "stopped", memoryMiB: number) =>
    daemon.repo.insert({ id: crypto.randomUUID(), name, spec: spec(name, memoryMiB), state, host: hostname(), vmgenid: crypto.randomUUID(), generation: 1, owner, approver: null, purpose: null, expiresAt: null, labels: {}, lineage: { kind: "image", image: "tiny" }, isTemplate: false, createdBy: "test", createdAt: new Date().toISOString() });
  await put("carol-live", "user:carol", "running", 900);
  await put("carol-more", "user:carol", "stopped", 128);
  const mem = await call("carol", "POST", "/v1/vms/carol-more/start");
  assert.deepEqual([mem.status, mem.json.error?.field], [422, "quotas.memoryMiB"]);
  assert.match(mem.json.error!.message, /owner "user:carol" would exceed its memory quota "quotas.memoryMiB" \(900 MiB in use \+ 128 MiB > 1024 MiB\)/);
  assert.equal((await daemon.repo.getByName("carol-more")).state, "stopped");

  // Within frank's own quota, but the host's memory is taken by everyone's running VMs.
  await put("frank-live", "user:frank", "running", 1000);
  await put("frank-more", "user:frank", "stopped", 256);
  const host = await call("frank", "POST", "/v1/vms/frank-more/start");
  assert.deepEqual([host.status, host.json.error?.field], [422, "memoryMiB"]);
  assert.match(host.json.error!.message, /the host's memory is taken: running VMs use 1900 MiB, this one needs 256 MiB, the host has 2048 MiB/);
  assert.equal((await daemon.repo.getByName("frank-more")).state, "stopped");
});
