/**
 * `vigil serve --cluster`: the cluster manager (docs/cluster.md). It runs no VMs. It authenticates users (tokens in
 * its inventory, PostgreSQL for a real cluster), keeps the hosts, which host holds which VM, the migrations and
 * durable events, forwards every VM request to the agent that holds the VM (over mutual TLS, acting for the user),
 * places new VMs, and orchestrates live migrations. Its own audit log records the cluster's actions; each agent's
 * records what it did.
 */
import { createAdaptorServer, type ServerType } from "@hono/node-server";
import { Hono, type Context } from "hono";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { userInfo } from "node:os";
import { AuditLog } from "../audit/audit-log.ts";
import { loadOrCreateSiteKey } from "../audit/site-key.ts";
import { authenticateRequest } from "../auth/authenticate.ts";
import { Guard, type RequestContext } from "../auth/guard.ts";
import { UserStore } from "../auth/users.ts";
import { caDir, issueMigrationPair, loadCa, qemuTlsIdentity } from "../cluster/ca.ts";
import { ClusterNetworks, registerClusterNetworkRoutes } from "./cluster-networks.ts";
import { ClusterRepository } from "../cluster/cluster-repository.ts";
import { HostRegistry, MANAGER_ACTOR } from "../cluster/host-registry.ts";
import { DEFAULT_LEASE_TTL_MS } from "../cluster/agent-lease.ts";
import { LeaseStore } from "../cluster/leases.ts";
import { HaMonitor } from "../cluster/ha.ts";
import { HaClaims } from "../cluster/ha-claims.ts";
import { placeVm, recommendBalance, recommendConsolidate } from "../cluster/placement.ts";
import type { DelegatedActor, HostLoad, MigrationLimits } from "../cluster/types.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import { ensurePrivateDir } from "../host/private-dir.ts";
import { openInventory } from "../inventory/db.ts";
import { createLogger, type Logger } from "../log.ts";
import { DEFAULT_LIMITS, MigrationOrchestrator, type MigrationStore } from "../migration/orchestrator.ts";
import { homeLayout, vigilHome } from "../paths.ts";
import { errorBody } from "../api/error-response.ts";
import { claimPidFile, listenOn, parseListen, VERSION } from "./daemon.ts";
import { createApiServer, loadTls, tlsSettingFor, type TlsSetting } from "./tls.ts";
import { registerManagerReads, type ManagerReads } from "./manager-reads.ts";
import { FORWARD_IDLE_MS, registerManagerForwarding } from "./manager-forward.ts";
import { shareHostKeys } from "./cluster-trust.ts";
import { CONSOLE_PROTOCOL, forwardConsoleUpgrade, toDelegated as delegatedActor } from "./stream-forward.ts";
import { createManagerWebConsole, managerAuthentication, registerManagerSessions, type ManagerEnv } from "./manager-web.ts";
import { isWebSocketUpgrade } from "./web-console.ts";
import { AccountService } from "../auth/account-service.ts";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";

export interface ManagerOptions {
  home?: string;
  /** The inventory: a `postgres://` URL (a cluster), or a SQLite path (a one-machine trial). */
  db: string;
  /** "ADDR:PORT" for the users' TCP listener (HTTPS off loopback, bearer tokens), or "none" (the default). */
  listen?: string;
  /** As for `vigil serve` (daemon/tls.ts): default "auto" off loopback, "off" on it. */
  tls?: TlsSetting | undefined;
  log?: Logger;
  heartbeatMs?: number;
}

export interface Manager {
  /** The TCP address actually bound (port 0 → a free port), if any. */
  tcpAddress: { host: string; port: number } | undefined;
  /** The TCP listener's certificate fingerprint when it serves HTTPS. */
  tlsFingerprint: string | undefined;
  close(): Promise<void>;
}


/** The user a request to an agent is made for: stream-forward.ts's, from the request's context. */
const toDelegated = (ctx: RequestContext): DelegatedActor => delegatedActor(ctx.actor);

function fail(c: Context, err: unknown, log: Logger): Response {
  if (err instanceof VigilError) return c.json(errorBody(err), err.status as 400);
  log.error({ err }, "unexpected error");
  return c.json({ error: { code: "VIGIL_INTERNAL", message: `Internal error: ${messageOf(err).slice(0, 200)}` } }, 500);
}

export async function startManager(o: ManagerOptions): Promise<Manager> {
  const home = homeLayout(o.home ?? vigilHome());
  const log = o.log ?? createLogger();
  // The users' TCP listener: the single-host daemon's rules and code (daemon/tls.ts), checked before anything is made.
  const tcp = parseListen(o.listen ?? "none");
  const tlsSetting = tcp ? tlsSettingFor(tcp.host, o.tls) : "off";
  ensurePrivateDir(home.home);
  ensurePrivateDir(home.runDir);
  ensurePrivateDir(home.keysDir);
  const ca = loadCa(caDir(home.keysDir));
  const tls = loadTls(tlsSetting, home.keysDir);
  claimPidFile(home);
  const db = await openInventory(o.db);
  const siteKey = loadOrCreateSiteKey(home.keysDir);
  const audit = await AuditLog.open(db, siteKey, "manager", join(home.keysDir, "audit-head.json"), {});
  const users = new UserStore(db);
  const localUser = userInfo().username;
  await users.ensureLocalUser(localUser);
  const guard = new Guard(audit);
  const repo = new ClusterRepository(db);
  const event = async (kind: string, subject: string, payload: unknown) => void (await repo.appendEvent({ kind, subject, payload: payload as Record<string, unknown> }));
  // Each host's lease (same database; its agent renews it): its epoch goes with every call, expired = fenced.
  const leases = new LeaseStore(db, { ttlMs: DEFAULT_LEASE_TTL_MS });
  // HA: planned after every heartbeat; shared-storage VMs are claimed, then restarted on the target (cluster/ha.ts).
  const ha: HaMonitor = new HaMonitor({
    claims: new HaClaims(db),
    claimer: `manager@${localUser}`,
    restart: async (to, body) => call(to, "POST", "/v1/agent/ha/restart", body, MANAGER_ACTOR, { timeoutMs: 120_000 }),
    repo,
    leases: () => leases.list(),
    isReady: (name): boolean => hosts.isReady(name),
    event,
    record: async (vm, details, result = "error") => void (await audit.append({ actor: "system", action: "vm.ha-restart", target: { kind: "vm", name: vm }, result, details })),
    log,
  });
  const hosts = new HostRegistry(repo, ca, { heartbeatMs: o.heartbeatMs ?? 2000, log, event, lease: (name) => leases.get(name), afterBeat: (): Promise<void> => ha.tick() });
  const call = async <T>(host: string, method: string, path: string, body: unknown, actor: DelegatedActor, opts?: { timeoutMs?: number }) => {
    const epoch = await hosts.epochOf(host);
    return (await hosts.client(host)).request<T>(method, path, { body, actor, ...(opts?.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}), ...(epoch !== undefined ? { epoch } : {}) });
  };
  const addresses = new Map<string, string>();
  const agentAddresses = new Map<string, string>();
  const store: MigrationStore = {
    create: async (r) => void (await repo.createMigration({ id: r.id, vmId: r.vmId, vmName: r.vmName, source: r.source, target: r.target, requestedBy: r.requestedBy, options: r.options })),
    update: async (id, c) => void (await repo.updateMigration(id, { state: c.state, phase: c.phase, progress: c.progress ?? undefined, result: c.result ?? undefined, error: c.error })),
    get: (id) => repo.findMigration(id),
    listActive: () => repo.listActiveMigrations(),
    placementOf: async (name) => {
      const p = await repo.findPlacementByName(name);
      return p ? { vmId: p.vmId, host: p.host } : undefined;
    },
    setPlacement: async (vmId, vmName, host, owner) => void (await repo.setPlacement({ vmId, vmName, host, owner })),
  };
  const orchestrator = new MigrationOrchestrator({
    agents: { call },
    store,
    hostAddress: (name) => addresses.get(name),
    agentAddress: (name) => agentAddresses.get(name),
    isReady: (name) => hosts.isReady(name),
    issuePair: async (id) => {
      const pair = await issueMigrationPair(ca, id);
      return { ...pair, srcSubject: qemuTlsIdentity(pair.src.certPem) };
    },
    record: async (action, vmName, result, actor, details) => void (await audit.append({ actor, action, target: { kind: "vm", name: vmName }, result, details })),
    event,
    log,
  });
  await hosts.start();
  // Every ready host trusts every other's bundle key (daemon/cluster-trust.ts); recorded here when it adds any.
  const shareTrust = async (): Promise<void> => {
    const added = await shareHostKeys({ call: (h, m, p, b, a) => call(h, m, p, b, a), actor: MANAGER_ACTOR }, hosts.readyHosts());
    if (added.length > 0) await audit.append({ actor: "system", action: "cluster.trust-share", target: { kind: "host", name: "manager" }, result: "ok", details: { added } });
  };
  for (const h of await hosts.list()) {
    const a = await hosts.addressOf(h.name);
    if (a) addresses.set(h.name, a);
    agentAddresses.set(h.name, h.address);
  }

  /** Which host holds a VM: the placement table, kept current by create, migrate and the heartbeats' VM lists. */
  const holder = async (name: string): Promise<string> => {
    const p = await repo.findPlacementByName(name);
    if (!p) throw new VigilError("VIGIL_VM_NOT_FOUND", `VM ${q(name)} does not exist in this cluster`);
    return p.host;
  };
  const loads = (): HostLoad[] =>
    hosts.readyHosts().map((name) => {
      const s = hosts.status(name)!;
      return { name, memTotalMiB: s.memTotalMiB, memReservedMiB: Math.min(1024, Math.floor(s.memTotalMiB / 8)), cpus: s.cpus, ready: true, vms: s.vms.filter((v) => v.state !== "stopped").map((v) => ({ name: v.name, memoryMiB: v.memoryMiB, vcpus: v.vcpus })) };
    });

  const app = new Hono<ManagerEnv>();
  app.onError((err, c) => fail(c, err, log));
  app.notFound((c) => c.json(errorBody(new VigilError("VIGIL_NOT_FOUND", `The cluster manager has no route ${c.req.method} ${c.req.path} (host-level requests go to an agent's own socket)`)), 404));
  app.get("/v1/health", (c) => c.json({ ok: true, version: VERSION, role: "manager" }));
  // The web console (daemon/manager-web.ts): its files, the session cookie and its CSRF header, as on a host.
  const web = { users, localUser, audit, secure: tls !== undefined };
  app.use("*", managerAuthentication(web));
  registerManagerSessions(app, web);
  const admin = async (c: Context<ManagerEnv>, action: string, target: string, details: Record<string, unknown>, fn: () => Promise<unknown>) =>
    c.json(await guard.run(c.get("ctx"), { action, permission: "cluster.manage", target: { kind: "host", name: target }, details }, fn));

  app.get("/v1/whoami", (c) => c.json({ ...c.get("ctx").actor, via: c.get("ctx").actor.via }));
  app.get("/v1/host", (c) => c.json({ role: "manager", version: VERSION, home: home.home, hosts: hosts.readyHosts().length }));
  app.post("/v1/hosts", async (c) => {
    const body = (await c.req.json()) as { name?: unknown; address?: unknown };
    const name = String(body.name ?? "");
    const address = String(body.address ?? "");
    return admin(c, "host.add", name, { address }, async () => {
      const r = await hosts.add(name, address);
      addresses.set(name, (await hosts.addressOf(name))!);
      agentAddresses.set(name, address);
      // Best effort now (the new host may not be ready yet); every import through the manager does it again.
      void shareTrust().catch((err: unknown) => log.warn({ err }, "sharing the hosts' bundle keys failed"));
      return r;
    });
  });
  app.delete("/v1/hosts/:name", async (c) => admin(c, "host.remove", c.req.param("name"), {}, async () => {
    const name = c.req.param("name");
    if ((await repo.listPlacements({ host: name })).length > 0) throw new VigilError("VIGIL_CONFLICT", `Host ${q(name)} still holds VMs: migrate them away first`);
    await hosts.remove(name);
    return { removed: name };
  }));

  app.get("/v1/vms", async (c) => {
    const actor = toDelegated(c.get("ctx"));
    // ?view=summary (the web console's inventory) is asked of every agent as it is; each VM gets its host's name.
    const view = c.req.query("view") === "summary" ? "?view=summary" : "";
    const all = await Promise.all((await hosts.list()).map(async (h) => {
      if (!hosts.isReady(h.name)) {
        // An unreachable host's VMs are unknown: shown from the placements, never guessed.
        return (await repo.listPlacements({ host: h.name })).map((p) => ({ id: p.vmId, name: p.vmName, state: "unknown", host: h.name, owner: p.owner }));
      }
      const { vms } = await call<{ vms: { id: string; name: string; owner: string }[] }>(h.name, "GET", `/v1/vms${view}`, undefined, actor).catch(() => ({ vms: [] }));
      for (const v of vms) if (!(await repo.findPlacementByName(v.name))) await repo.setPlacement({ vmId: v.id, vmName: v.name, host: h.name, owner: v.owner });
      return vms.map((v) => ({ ...v, host: h.name }));
    }));
    // The same shape as one host's list (so every client works unchanged), each VM with its host.
    return c.json({ vms: all.flat() });
  });
  app.post("/v1/vms", async (c) => {
    const ctx = c.get("ctx");
    const body = (await c.req.json()) as Record<string, unknown>;
    const { host: pinned, ...spec } = body;
    let host: string;
    if (typeof pinned === "string") {
      if (!hosts.isReady(pinned)) throw new VigilError("VIGIL_CONFLICT", `Host ${q(pinned)} cannot take VMs now`, { field: "host" });
      host = pinned;
    } else {
      const placed = placeVm(loads(), { memoryMiB: typeof spec.memoryMiB === "number" ? spec.memoryMiB : 256, vcpus: typeof spec.vcpus === "number" ? spec.vcpus : 1 });
      if (!placed.ok) throw new VigilError("VIGIL_CONFLICT", placed.message);
      host = placed.host;
    }
    const vm = await call<{ id: string; name: string; owner: string }>(host, "POST", "/v1/vms", spec, toDelegated(ctx));
    await repo.setPlacement({ vmId: vm.id, vmName: vm.name, host, owner: vm.owner });
    await event("vm.created", vm.name, { host });
    return c.json({ ...vm, host }, 201);
  });
  app.post("/v1/vms/:name/migrate", async (c) => {
    const ctx = c.get("ctx");
    const body = (await c.req.json()) as { to?: string; maxDowntimeMs?: number; timeoutMs?: number; maxBandwidth?: number; cancel?: boolean };
    const name = c.req.param("name");
    if (body.cancel) return c.json(await orchestrator.cancel(toDelegated(ctx), name));
    if (typeof body.to !== "string") throw new VigilError("VIGIL_BAD_REQUEST", "Give the target host: --to HOST", { field: "to" });
    const limits: MigrationLimits = { ...DEFAULT_LIMITS, ...(body.maxDowntimeMs !== undefined ? { maxDowntimeMs: body.maxDowntimeMs } : {}), ...(body.timeoutMs !== undefined ? { timeoutMs: body.timeoutMs } : {}), ...(body.maxBandwidth !== undefined ? { maxBandwidth: body.maxBandwidth } : {}) };
    if (!Number.isInteger(limits.maxBandwidth) || limits.maxBandwidth < 0) throw new VigilError("VIGIL_BAD_REQUEST", "Invalid bandwidth cap: bytes per second, 0 for none", { field: "maxBandwidth" });
    if (!Number.isInteger(limits.maxDowntimeMs) || limits.maxDowntimeMs < 10 || limits.maxDowntimeMs > 60_000) throw new VigilError("VIGIL_BAD_REQUEST", "Invalid max downtime: 10-60000 ms", { field: "maxDowntimeMs" });
    if (!Number.isInteger(limits.timeoutMs) || limits.timeoutMs < 1000 || limits.timeoutMs > 24 * 3600_000) throw new VigilError("VIGIL_BAD_REQUEST", "Invalid timeout: 1 s to 24 h", { field: "timeoutMs" });
    return c.json(await orchestrator.start(toDelegated(ctx), name, body.to, limits), 202);
  });
  // `vigil vm set VM --ha|--no-ha`: the flag lives with the placement (0007-cluster-ha); `vigil cluster ha`: the last plan.
  app.post("/v1/vms/:name/ha", async (c) => {
    const name = c.req.param("name");
    const body = (await c.req.json().catch(() => ({}))) as { ha?: unknown };
    if (typeof body.ha !== "boolean") throw new VigilError("VIGIL_BAD_REQUEST", `ha must be true or false, not ${q(body.ha)}`, { field: "ha" });
    const p = await repo.findPlacementByName(name);
    if (!p) throw new VigilError("VIGIL_VM_NOT_FOUND", `VM ${q(name)} does not exist in this cluster`);
    const flag = body.ha;
    return c.json(await guard.run(c.get("ctx"), { action: "vm.set-ha", permission: "vm.control", target: { kind: "vm", id: p.vmId, name }, owner: p.owner, details: { ha: flag } }, async () => {
      await repo.setHa(name, flag);
      return { name, host: p.host, ha: flag };
    }));
  });
  app.get("/v1/cluster/ha", async (c) => {
    await guard.authorize(c.get("ctx"), { action: "cluster.ha", permission: "cluster.manage", target: { kind: "host", name: "manager" }, readOnly: true });
    return c.json({ ha: (await repo.listPlacements()).filter((p) => p.ha).map((p) => ({ name: p.vmName, host: p.host })), plan: ha.last ?? null });
  });
  // The manager's own audit log (cluster actions), for holders of audit.read.
  app.get("/v1/audit", async (c) => {
    const ctx = c.get("ctx");
    await guard.authorize(ctx, { action: "audit.read", permission: "audit.read", target: { kind: "host", name: "manager" } });
    return c.json({ records: await audit.list({ limit: Math.min(10_000, Number(c.req.query("limit") ?? 100) || 100) }) });
  });
  app.get("/v1/audit/verify", async (c) => {
    await guard.authorize(c.get("ctx"), { action: "audit.verify", permission: "audit.read", target: { kind: "host", name: "manager" } });
    return c.json(await audit.verify());
  });
  // Hosts, migrations, balance, consolidate and events: authorized per route (daemon/manager-reads.ts).
  const reads: ManagerReads = {
    guard,
    repo,
    db,
    hosts: async () => (await hosts.list()).map((h) => ({ ...h, state: hosts.isReady(h.name) ? "ready" : h.state })),
    migration: (id) => orchestrator.get(id),
    balance: (raw) => {
      // minGain: the least drop of the load spread (a ratio, 0.01 = 1 point) a move must bring; default 0.01.
      const minGain = raw === undefined ? 0.01 : Number(raw);
      if (!/^[0-9]*\.?[0-9]+$/.test(raw ?? "0") || !(minGain >= 0 && minGain <= 1)) throw new VigilError("VIGIL_BAD_REQUEST", `minGain must be a load ratio from 0 to 1 (0.01 = 1 point), not ${q(raw)}`, { field: "minGain" });
      return recommendBalance(loads(), { maxMoves: 5, minGain });
    },
    consolidate: () => recommendConsolidate(loads()),
    log,
  };
  const events = registerManagerReads(app, reads);
  // Users and their tokens live in the shared inventory: `vigil user add|list|token` work against the manager too.
  const accounts = new AccountService(users, guard);
  app.get("/v1/users", async (c) => c.json({ users: await accounts.list(c.get("ctx")) }));
  app.post("/v1/users", async (c) => c.json(await accounts.add(c.get("ctx"), await c.req.json().catch(() => undefined)), 201));
  app.post("/v1/users/:name/tokens", async (c) => c.json(await accounts.issueToken(c.get("ctx"), c.req.param("name"), await c.req.json().catch(() => ({}))), 201));
  // The cluster's networks (docs/cluster.md "Networks across hosts (VXLAN)"): one VXLAN segment over every ready host.
  registerClusterNetworkRoutes(app, new ClusterNetworks({ db, guard, log, readyHosts: () => hosts.readyHosts(), addressOf: (h) => hosts.addressOf(h), call: (h, m, p, b, a) => call(h, m, p, b, a), toDelegated }));
  // Every other VM request, imports, recordings, captures, forwards and /metrics: relayed as bytes (daemon/manager-forward.ts).
  registerManagerForwarding(app, {
    relay: async (host, method, path, r) => {
      const epoch = await hosts.epochOf(host);
      return (await hosts.client(host)).relay(method, path, { ...r, idleTimeoutMs: FORWARD_IDLE_MS, ...(epoch !== undefined ? { epoch } : {}) });
    },
    holder,
    readyHosts: () => hosts.readyHosts(),
    // Best effort: a host that cannot be asked now does not stop an import onto another (its refusal would name the key).
    beforeImport: () => shareTrust().catch((err: unknown) => log.warn({ err }, "sharing the hosts' bundle keys failed")),
    place: (demand) => {
      const placed = placeVm(loads(), demand);
      if (!placed.ok) throw new VigilError("VIGIL_CONFLICT", placed.message);
      return placed.host;
    },
    setPlacement: async (p) => void (await repo.setPlacement(p)),
    deletePlacement: async (name) => {
      const p = await repo.findPlacementByName(name);
      if (p) await repo.deletePlacement(p.vmId);
    },
    event: (kind, subject, payload) => event(kind, subject, payload),
    toDelegated,
    log,
  });

  const socketServer: ServerType = createAdaptorServer({ fetch: (req: Request) => app.fetch(req, { transport: "unix" }) });
  rmSync(home.socket, { force: true });
  await new Promise<void>((resolve, reject) => {
    socketServer.once("error", reject);
    socketServer.listen(home.socket, () => resolve());
  });
  // The users' door (`--listen`): the same app and tokens as the socket; TLS as the single-host daemon does it.
  let tcpServer: ServerType | undefined;
  let tcpAddress: Manager["tcpAddress"];
  if (tcp) {
    // The peer's address names the source of refused requests in the audit log (audit/denials.ts).
    tcpServer = createApiServer((req: Request, env?: { incoming?: { socket?: { remoteAddress?: string | undefined } } }) => app.fetch(req, { transport: "tcp", remoteAddress: env?.incoming?.socket?.remoteAddress }), tls);
    await listenOn(tcpServer, tcp, o.listen!);
    const addr = tcpServer.address();
    if (addr && typeof addr === "object") tcpAddress = { host: addr.address, port: addr.port };
  }
  // The serial console through the manager: authenticated here, authorized and audited by the agent that holds the VM.
  const consoleDeps = (transport: "unix" | "tcp") => ({
    authenticate: (req: IncomingMessage) => authenticateRequest(users, localUser, transport, req.headers.authorization),
    holder,
    open: async (host: string, path: string, actor: DelegatedActor) => {
      const epoch = await hosts.epochOf(host);
      return (await hosts.client(host)).upgrade(path, CONSOLE_PROTOCOL, { actor, ...(epoch !== undefined ? { epoch } : {}) });
    },
    onError: (err: unknown) => log.error({ err }, "console forwarding failed"),
  });
  const consoles = new Set<Duplex>();
  // The browser's console WebSocket exists on the TCP listener only (where a browser can be); the CLI's raw upgrade on both.
  const webConsole = createManagerWebConsole({ ...web, holder, open: consoleDeps("tcp").open, onError: (err) => log.error({ err }, "web console forwarding failed") });
  const onUpgrade = (transport: "unix" | "tcp") => (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    consoles.add(socket);
    socket.once("close", () => consoles.delete(socket));
    if (transport === "tcp" && isWebSocketUpgrade(req)) void webConsole.upgrade(req, socket, head);
    else void forwardConsoleUpgrade(consoleDeps(transport), req, socket, head);
  };
  socketServer.on("upgrade", onUpgrade("unix"));
  tcpServer?.on("upgrade", onUpgrade("tcp"));
  const reconciling = await orchestrator.reconcile(MANAGER_ACTOR);
  await audit.append({ actor: "system", action: "manager.start", target: { kind: "host", name: "manager" }, result: "ok", details: { version: VERSION, hosts: (await hosts.list()).length, migrationsFollowed: reconciling } });
  log.info({ home: home.home, socket: home.socket, http: tcpAddress ? `${tcpAddress.host}:${tcpAddress.port}` : null, ...(tls ? { tls: true, tlsFingerprint: tls.fingerprint } : {}), hosts: hosts.readyHosts(), migrationsFollowed: reconciling }, "vigil cluster manager is serving");

  return {
    tcpAddress,
    tlsFingerprint: tls?.fingerprint,
    close: async () => {
      orchestrator.close();
      hosts.close();
      await events.close();
      // Open consoles and event streams end with the manager (the agents' sides close with them).
      webConsole.close();
      for (const s of consoles) s.destroy();
      for (const server of [tcpServer, socketServer]) {
        if (!server) continue;
        const closed = new Promise<void>((r) => server.close(() => r()));
        (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
        await closed;
      }
      await audit.close();
      await db.destroy();
      rmSync(home.socket, { force: true });
      rmSync(home.pidFile, { force: true });
    },
  };
}

export async function runManager(o: ManagerOptions): Promise<void> {
  const m = await startManager(o);
  const stop = () => void m.close().then(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
