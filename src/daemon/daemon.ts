/**
 * `vigil serve`: the manager and the local host agent in one process. It opens the inventory and the audit
 * log, finds running VMs again, and serves the API on a unix socket (0700 directory: the local user, no token)
 * and on TCP (bearer tokens). On SIGTERM/SIGINT it detaches from every QEMU and exits: VMs keep running.
 */
import { createAdaptorServer, type ServerType } from "@hono/node-server";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { IncomingMessage } from "node:http";
import { connect, type Socket } from "node:net";
import { hostname, userInfo } from "node:os";
import { join } from "node:path";
import { AuditLog } from "../audit/audit-log.ts";
import { AuditService } from "../audit/audit-service.ts";
import { loadOrCreateSiteKey } from "../audit/site-key.ts";
import { FileWitness, HttpWitness } from "../audit/witness.ts";
export { runWitnessServer } from "../audit/witness-server.ts";
import { AccountService } from "../auth/account-service.ts";
import { Guard, type RequestContext } from "../auth/guard.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import { UserStore } from "../auth/users.ts";
import { loadConfig } from "../config.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import { ensurePrivateDir } from "../host/private-dir.ts";
import { processAlive } from "../host/qemu-process.ts";
import { ImageCatalog } from "../image/catalog.ts";
import { ImageService } from "../image/image-service.ts";
import { openSqlite, type Db } from "../inventory/db.ts";
import { createLogger, type Logger } from "../log.ts";
import { homeLayout, vigilCache, vigilHome, type HomeLayout } from "../paths.ts";
import { DataRegistry } from "../provenance/data-registry.ts";
import { LocationHistory } from "../provenance/locations.ts";
import { ProvenanceService } from "../provenance/provenance-service.ts";
import { detectAccelerator } from "../qemu/accel.ts";
import { VmRepository } from "../vm/vm-repository.ts";
import { VmService } from "../vm/vm-service.ts";
import type { HostFacts } from "../vm/host-limits.ts";
import { GenerationLog } from "../vtime/generations.ts";
import { checkRevert, floorViolations } from "../vtime/rollback-policy.ts";
import { reapplyHook } from "../vtime/reapply-hook.ts";
import { SnapshotRepository } from "../storage/snapshot-repository.ts";
import { SnapshotService } from "../storage/snapshots.ts";
import { CloneService } from "../storage/clones.ts";
import { TrustStore } from "../storage/trust.ts";
import { BundleService } from "../storage/bundle/bundle-service.ts";
import { ImportedBundles } from "../storage/bundle/imported-bundles.ts";
import { ProgressBus } from "../util/progress.ts";
import { TaskLog } from "../util/task-log.ts";
import { VtimeService } from "../vtime/vtime-service.ts";
import { MonotonicStore } from "../vtime/store.ts";
import { IntrospectionService } from "../introspection/service.ts";
import { VisService } from "../network/vis-service.ts";
import { createApp } from "../api/app.ts";
import { FirewallRepository } from "../network/firewall/firewall-repository.ts";
import { FirewallService } from "../network/firewall/firewall-service.ts";
import { PostureRepository } from "../posture/posture-repository.ts";
import { PostureService } from "../posture/posture-service.ts";
import { copyPostureToClone } from "../posture/posture-transfer.ts";
import { RescanScheduler, type RescanOptions } from "../posture/rescan.ts";
import { ScanService } from "../posture/scan-service.ts";
import { RecordingService } from "../recording/recording-service.ts";
import type { ApiDeps, App } from "../api/context.ts";
import { rawErrorResponse, vigilErrorResponse } from "../api/error-response.ts";
import { authenticateRequest } from "../auth/authenticate.ts";
import { createApiServer, loadTls, tlsSettingFor, type TlsSetting } from "./tls.ts";
import { createServer as createHttpsServer } from "node:https";
import { startExpiryWatch } from "../vm/expiry.ts";
import { installLoopbackGuard } from "../host/loopback-guard.ts";
import { NetworkService } from "../network/network-service.ts";
import type { TLSSocket } from "node:tls";
import { loadAgentCredentials } from "../cluster/agent-credentials.ts";
import { AgentMigrations } from "../migration/agent-migrations.ts";
import { mtlsServerOptions, peerIdentity, requirePeerRole } from "../cluster/mtls.ts";
import { hostNetns, netnsName } from "../network/netns.ts";
import { AgentLease, DEFAULT_LEASE_MARGIN_MS, DEFAULT_LEASE_TTL_MS } from "../cluster/agent-lease.ts";
import { LeaseStore } from "../cluster/leases.ts";
import { ACTOR_HEADER, EPOCH_HEADER } from "../cluster/types.ts";
import { validateSharedStorage } from "../cluster/shared-storage.ts";
import { HaAgent } from "../migration/ha-agent.ts";
import { openInventory } from "../inventory/db.ts";
import { MetricsService } from "../metrics/metrics-service.ts";
import { createWebConsole, isWebSocketUpgrade } from "./web-console.ts";

export const VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(join(import.meta.dirname, "..", "..", "package.json"), "utf8")) as { version: string }).version;
  } catch {
    return "0.0.0";
  }
})();

export interface DaemonOptions {
  home?: string;
  cache?: string;
  /** "ADDR:PORT" for the TCP listener, or "none". */
  listen?: string;
  /** TLS on the TCP listener: default "auto" (the site certificate) off loopback, "off" (plain HTTP) on it. */
  tls?: TlsSetting | undefined;
  log?: Logger;
  /** Host facts for tests (the host's memory); read from /proc otherwise. */
  hostFacts?: () => HostFacts;
  /** Posture rescan timings (posture/rescan.ts; tests shorten them): how often to look, the period, the cap per run. */
  rescan?: RescanOptions;
  /** IDS timings for tests: the wait after the agent's first answer, and when a silent agent is reported. */
  introspection?: { settleMs?: number; agentSilentMs?: number };
  /**
   * Agent mode (`vigil agent`, docs/cluster.md): the cluster listener on `listen` (HTTPS, mutual TLS: only the
   * manager's certificate from the vigil CA), with the credentials `vigil host add` wrote to `credentialsDir`.
   */
  cluster?: {
    listen: string;
    credentialsDir: string;
    /** `--lease-db`: the cluster's PostgreSQL, where this host holds its lease (docs/cluster.md "Fencing, wired"). */
    leaseDb?: string | undefined;
    /** Lease ttl and fence margin (ms; default 15 s and 5 s). */
    leaseTtlMs?: number | undefined;
    leaseMarginMs?: number | undefined;
    /** `--shared-storage DIR`: the same path on every host (src/cluster/shared-storage.ts). */
    sharedStorage?: string | undefined;
  } | undefined;
}

export interface Daemon {
  home: HomeLayout;
  app: App;
  deps: ApiDeps;
  /** The inventory's VM table, for tests and tools that set up state directly. */
  repo: VmRepository;
  /** The TCP address actually bound (port 0 → a free port), if any. */
  tcpAddress: { host: string; port: number } | undefined;
  /** The TCP listener's certificate fingerprint when it serves HTTPS. */
  tlsFingerprint: string | undefined;
  close(): Promise<void>;
}

export function listenOn(server: ServerType, where: string | { host: string; port: number }, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", (err) => reject(new VigilError("VIGIL_HOST", `Cannot listen on ${what}: ${messageOf(err)}`, { cause: err })));
    if (typeof where === "string") server.listen(where, () => resolve());
    else server.listen(where.port, where.host, () => resolve());
  });
}

/** Refuses to start a second daemon on the same VIGIL_HOME. */
export function claimPidFile(home: HomeLayout): void {
  if (existsSync(home.pidFile)) {
    const pid = Number.parseInt(readFileSync(home.pidFile, "utf8"), 10);
    if (Number.isSafeInteger(pid) && pid !== process.pid && processAlive(pid)) {
      const cmd = (() => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, "utf8");
        } catch {
          return "";
        }
      })();
      if (cmd.includes("serve")) throw new VigilError("VIGIL_CONFLICT", `vigil is already serving ${q(home.home)} (pid ${pid})`);
    }
  }
  writeFileSync(home.pidFile, `${process.pid}\n`, { mode: 0o600 });
}

/** `--listen` as host and port (undefined for "none"); a bad value is refused before anything is created. */
export function parseListen(listen: string): { host: string; port: number } | undefined {
  if (listen === "none") return undefined;
  const m = /^(.+):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid --listen ${q(listen)}: use ADDR:PORT (e.g. 127.0.0.1:7450, port 0-65535) or "none"`, { field: "listen" });
  return { host: m[1]!.replace(/^\[(.*)\]$/, "$1"), port };
}

export async function startDaemon(options: DaemonOptions = {}): Promise<Daemon> {
  const home = homeLayout(options.home ?? vigilHome());
  const log = options.log ?? createLogger();
  const listen = options.listen ?? "127.0.0.1:7450";
  const tcpWhere = parseListen(listen);
  const tlsSetting = tcpWhere ? tlsSettingFor(tcpWhere.host, options.tls) : "off";
  ensurePrivateDir(home.home);
  ensurePrivateDir(home.runDir);
  ensurePrivateDir(home.vmsDir);
  ensurePrivateDir(home.keysDir);
  const tls = loadTls(tlsSetting, home.keysDir);
  const clusterWhere = options.cluster ? parseListen(options.cluster.listen) : undefined;
  if (options.cluster && !clusterWhere) throw new VigilError("VIGIL_BAD_REQUEST", "An agent needs a cluster listener: --listen ADDR:PORT", { field: "listen" });
  const agentCreds = options.cluster ? loadAgentCredentials(options.cluster.credentialsDir) : undefined;
  const sharedStorage = options.cluster?.sharedStorage !== undefined ? validateSharedStorage(options.cluster.sharedStorage) : undefined;
  claimPidFile(home);

  const config = loadConfig(home.home);
  const db: Db = await openSqlite(home.database);
  // An agent is the host its certificate names: audit records, locations and the cluster all use that name.
  const hostName = agentCreds?.name ?? hostname();
  const siteKey = loadOrCreateSiteKey(home.keysDir);
  const witnesses = config.audit.witnesses.map((w) => (w.kind === "file" ? new FileWitness(w.path) : new HttpWitness(w.url)));
  const audit = await AuditLog.open(db, siteKey, hostName, join(home.keysDir, "audit-head.json"), {
    witnesses,
    onPublishError: (witness, err) => log.warn({ witness, err: messageOf(err) }, "cannot publish the audit head to a witness"),
  });
  const users = new UserStore(db);
  const localUser = userInfo().username;
  await users.ensureLocalUser(localUser);
  const guard = new Guard(audit);
  const accel = detectAccelerator();
  const catalog = new ImageCatalog(options.cache ?? vigilCache());
  const repo = new VmRepository(db);
  const registry = new DataRegistry(db, hostName, home.vmsDir, sharedStorage);
  const locations = new LocationHistory(db);
  const generations = new GenerationLog(db);
  // The switch: vigil's netns, bridges, taps, addresses and dnsmasq (network/). VMs plug bridged NICs in through it.
  const network = new NetworkService({ db, guard, audit, netns: hostNetns(netnsName(home.home)), runDir: home.runDir, log: log.child({ part: "switch" }), hostName, underlay: clusterWhere?.host });
  const vms = new VmService({ repo, catalog, guard, audit, users, registry, locations, home, hostName, accel, policy: { requireOwnership: config.policy.requireOwnership, expiredVms: config.policy.expiredVms }, generations, log, hostFacts: options.hostFacts, consoleLogMaxBytes: config.consoleLog.maxBytes, quotas: config.quotas, network, sharedStorage });
  // The nftables table that keeps VM uids off the host's loopback (host/loopback-guard.ts); an open NIC's start retries it and refuses without it.
  await installLoopbackGuard().catch((err: unknown) => log.warn({ err: messageOf(err) }, "Cannot install the loopback guard: VMs with an open NIC will not start"));
  const progress = new ProgressBus();
  const tasks = new TaskLog(progress);
  const snapshotRepo = new SnapshotRepository(db);
  const reapply = reapplyHook(config.hooks.reapply);
  const snapshots = new SnapshotService({ vms, snapshots: snapshotRepo, generations, audit, progress, log, policy: checkRevert, reapply, registry });
  vms.addBeforeContHook(snapshots.resumeOnStart);
  const trust = new TrustStore(db, siteKey, guard);
  const firewall = new FirewallService({ repo: new FirewallRepository(db), vms, guard, audit, log });
  // Every attach/detach (and network change) recompiles the host's ruleset before the switch returns: no tap
  // carries traffic without its rules, and a ruleset that cannot be installed fails the attach (closed).
  firewall.connect(network);
  network.onChange(firewall.engine.listener);
  // The network-access gate (docs/transience.md "The gate"): on every start and resume, before the guest runs.
  // Offline scans of dormant disks run in a child process over vigil's own readers (docs/transience.md).
  // (`current` is read only after the scan service below exists.)
  const posture: PostureService = new PostureService({ repo: new PostureRepository(db), vms, firewall, guard, audit, log, current: (): Promise<{ advisoriesSha256?: string; rulesSha256?: string }> => scanService.current() });
  const scanService: ScanService = new ScanService({ db, vms, posture, guard, log, roots: [home.vmsDir, home.imagesDir, options.cache ?? vigilCache()] });
  posture.setPreBootScanner((vm) => scanService.scanLocked(vm));
  // Dormant VMs whose scan fell behind are rescanned when the advisory data or rules change, and every 6 h
  // (posture/rescan.ts), as the system; `POST /v1/posture/rescan` runs the same now.
  const postureRows = new PostureRepository(db);
  const rescans = new RescanScheduler({
    all: () => repo.listShared(),
    rows: () => postureRows.all(),
    anyScanned: () => postureRows.anyScanned(),
    policyOf: (vm) => posture.effectivePolicy(vm),
    current: () => scanService.current(),
    scan: (name) => scanService.scan({ actor: SYSTEM_ACTOR, requestId: crypto.randomUUID() }, name),
    log: log.child({ part: "rescan" }),
  }, options.rescan);
  posture.setRescanner((reason) => rescans.runOnce(reason));
  vms.addBeforeContHook((vm) => posture.gate(vm, "start"));
  vms.addBeforeResumeHook((vm) => posture.gate(vm, "resume"));
  // Recordings of a VM's execution and their replays (docs/recording.md); replicas run in <home>/rp.
  const recordings = new RecordingService({ db, vms, guard, audit, registry, log, replicasDir: join(home.home, "rp") });
  const clones = new CloneService(vms, repo, snapshotRepo, progress, home.vmsDir, { policy: checkRevert, reapply }, firewall, { copyToClone: (src, clone) => copyPostureToClone(db, src, clone) });
  const bundles = new BundleService({ vms, snapshots: snapshotRepo, snapshotService: snapshots, trust, siteKey, catalog, registry, guard, progress, vmsDir: home.vmsDir, hostName, log, imported: new ImportedBundles(db), floorViolations, policies: firewall });
  const vtime = new VtimeService(vms, generations, new MonotonicStore(db), audit, log);
  vms.addRuntimeHook(vtime.attach);
  // Before recover(): reattached VMs get their watchers (and their watches) back.
  const introspection = new IntrospectionService({ vms, repo, guard, audit, snapshots, db, log, accel: accel.accel, ...options.introspection });
  await introspection.load();
  vms.addRuntimeHook(introspection.attach);
  const images = new ImageService(db, catalog, guard, home.imagesDir, async (disk) =>
    (await repo.list()).filter((vm) => vm.spec.disks.some((d) => d.backing === disk)).map((vm) => vm.name),
  );
  const imageLeftovers = await images.load();
  // Counters, mirrors, port forwards (docs/network.md), over the switch; a forward opens once its NIC is plugged in.
  const vis = new VisService({
    switch: network,
    guard,
    audit,
    registry,
    db,
    captureDir: (vmId) => join(home.vmsDir, vmId, "captures"),
    runDir: home.runDir,
    lookupVm: (ctx, name, action) => vms.lookup(ctx, name, action),
    vmById: (id) => repo.getById(id).catch(() => undefined),
    log,
  });
  network.onChange(async () => void (await vis.restoreForwards()));
  // An agent moves VMs in and out for the manager (docs/cluster.md "Live migration").
  const migrations = clusterWhere ? new AgentMigrations({ vms, db, guard, audit, catalog, hostName, vmsDir: home.vmsDir, registry, log: log.child({ part: "migration" }), watches: introspection, clusterHost: clusterWhere.host, credentials: agentCreds!.bundle }) : undefined;
  // Shared storage: the dossiers an HA restart starts from, the restart itself, the stale copies dropped (migration/ha-agent.ts).
  const haAgent = clusterWhere && sharedStorage !== undefined
    ? new HaAgent({ vms, db, guard, audit, catalog, hostName, vmsDir: home.vmsDir, registry, log: log.child({ part: "ha" }), watches: introspection, sharedStorage, clusterDb: () => leaseDb })
    : undefined;
  const deps: ApiDeps = {
    haAgent,
    migrations,
    vms,
    users,
    accounts: new AccountService(users, guard),
    provenance: new ProvenanceService(db, repo, registry, locations, audit, guard, users),
    audit,
    auditService: new AuditService(audit, guard, () => vms.owners()),
    guard,
    catalog,
    images,
    snapshots,
    clones,
    bundles,
    trust,
    progress,
    tasks,
    vtime,
    introspection,
    network,
    firewall,
    posture,
    scans: scanService,
    recordings,
    vis,
    metrics: new MetricsService({ vms, netCounters: (ctx, name) => vis.counters(ctx, name), hostName }),
    host: { name: hostName, accelerator: accel.accel, accelReason: accel.reason, version: VERSION, home: home.home },
    clusterEpoch: () => agentLease?.epoch ?? 0,
    localUser,
    log,
  };

  const app = createApp(deps);
  /** Opens the lease database and takes the lease; the fence kills every live VM of this host, as `system`. */
  const startAgentLease = async (c: NonNullable<DaemonOptions["cluster"]>, host: string): Promise<AgentLease> => {
    leaseDb = await openInventory(c.leaseDb!, { max: 2, onIdleError: (err) => log.warn({ err: messageOf(err) }, "lease database connection lost") });
    const ttlMs = c.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
    const marginMs = c.leaseMarginMs ?? DEFAULT_LEASE_MARGIN_MS;
    const ctx: RequestContext = { actor: SYSTEM_ACTOR, requestId: `self-fence-${host}` };
    const killed: string[] = [];
    const failed: string[] = [];
    const l = await AgentLease.start({
      store: new LeaseStore(leaseDb, { ttlMs }),
      host,
      holder: host,
      ttlMs,
      marginMs,
      log,
      stopVms: async () => {
        killed.length = failed.length = 0;
        // Killed, not shut down: the margin is seconds, and the guest must be gone before the lease expires.
        const live = (await repo.list()).filter((vm) => ["running", "paused", "starting", "stopping"].includes(vm.state));
        await Promise.all(live.map(async (vm) => {
          try {
            await vms.kill(ctx, vm.name);
            killed.push(vm.name);
          } catch (err) {
            failed.push(`${vm.name}: ${messageOf(err)}`);
          }
        }));
        if (failed.length > 0) throw new VigilError("VIGIL_HOST", `Cannot kill ${failed.join("; ")}`);
      },
      onFenced: async (r) => {
        await audit.append({ actor: SYSTEM_ACTOR.name, action: "host.self-fenced", target: { kind: "host", name: host }, result: r.stopError ? "error" : "ok", details: { reason: r.reason, epoch: r.epoch, fencedAt: r.at, stoppedAt: new Date().toISOString(), killed: [...killed], ...(r.stopError ? { error: r.stopError } : {}) } });
      },
      onReacquired: async (lease) => {
        await audit.append({ actor: SYSTEM_ACTOR.name, action: "host.lease-acquired", target: { kind: "host", name: host }, result: "ok", details: { epoch: lease.epoch, expiresAt: lease.expiresAt } });
        await haAgent?.dropStale().catch((err: unknown) => log.warn({ err: messageOf(err) }, "cannot drop VMs restarted elsewhere"));
      },
    });
    // A fenced host starts no VM (every start path runs these hooks before the guest runs; QEMU is then killed).
    vms.addBeforeContHook(async (vm) => l.assertMayRun(vm.name));
    return l;
  };
  const servers: ServerType[] = [];
  const webConsoles: Array<{ close(): void }> = [];
  let stopExpiry = () => {};
  let recovered: Awaited<ReturnType<VmService["recover"]>> | undefined;

  let closed = false;
  // `vigil agent --lease-db`: the host's lease, its self-fence and the epoch gate (set before the listeners serve).
  let agentLease: AgentLease | undefined;
  let leaseDb: Db | undefined;
  const close = async () => {
    if (closed) return;
    closed = true;
    stopExpiry();
    agentLease?.close();
    haAgent?.close();
    await leaseDb?.destroy().catch(() => undefined);
    await migrations?.close();
    for (const w of webConsoles) w.close();
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    await vtime.close();
    await rescans.stop();
    tasks.close();
    await introspection.close();
    await vis.close();
    await vms.close();
    await audit.close();
    await db.destroy();
    rmSync(home.socket, { force: true });
    rmSync(home.pidFile, { force: true });
    log.info("vigil stopped; VMs keep running");
  };

  // Requests wait until running VMs are found again, so nobody sees a VM as stopped that is running.
  let markReady!: () => void;
  const ready = new Promise<void>((resolve) => (markReady = resolve));
  const serve = (transport: "unix" | "tcp") => async (req: Request, env?: { incoming?: { socket?: { remoteAddress?: string | undefined } } }) => {
    await ready;
    return app.fetch(req, { transport, remoteAddress: env?.incoming?.socket?.remoteAddress, secure: transport === "tcp" && tls !== undefined });
  };
  let tcpAddress: Daemon["tcpAddress"];
  let unixServer: ServerType;
  let clusterServer: ServerType | undefined;
  try {
    // TCP first: when its address is taken, no client has seen the socket of a daemon that then goes away.
    if (tcpWhere) {
      const tcpServer = createApiServer(serve("tcp"), tls);
      await listenOn(tcpServer, tcpWhere, listen);
      servers.push(tcpServer);
      const addr = tcpServer.address();
      if (addr && typeof addr === "object") tcpAddress = { host: addr.address, port: addr.port };
    }
    if (options.cluster?.leaseDb !== undefined && agentCreds) {
      agentLease = await startAgentLease(options.cluster, agentCreds.name);
      // Before anything is served: a VM the cluster restarted elsewhere while this host was lost is not kept here.
      await haAgent?.dropStale();
    }
    haAgent?.start();
    if (clusterWhere && agentCreds) {
      // The manager's door: a certificate that does not chain to the vigil CA fails the handshake; one of
      // another role gets 403 here; the user it acts for is in its x-vigil-actor header (auth/authenticate.ts).
      const serveCluster = async (req: Request, env?: { incoming?: { socket?: unknown } }) => {
        await ready;
        const socket = env?.incoming?.socket as (TLSSocket & { remoteAddress?: string }) | undefined;
        try {
          const peer = peerIdentity(socket);
          // Another agent may do exactly one thing here: hand over the switchover state of a VM it is migrating to us.
          const store = /^\/v1\/agent\/migrations\/([a-z0-9-]{1,64})\/store$/.exec(new URL(req.url).pathname);
          if (peer?.role === "agent" && store && req.method === "POST" && migrations) {
            return Response.json(await migrations.acceptStore(peer.name, store[1]!, await req.json().catch(() => undefined)));
          }
          // …or push the disks of a stopped VM it is moving to us (src/migration/cold-agents.ts).
          const disk = /^\/v1\/agent\/cold\/([a-z0-9-]{1,64})\/disks\/([a-z][a-z0-9]{0,15})$/.exec(new URL(req.url).pathname);
          if (peer?.role === "agent" && disk && req.method === "PUT" && migrations) {
            return Response.json(await migrations.cold.acceptDisk(peer.name, disk[1]!, disk[2]!, req.body));
          }
          requirePeerRole(peer, "manager");
          // With leases on, a command sent under an older lease of this host never reaches the app.
          agentLease?.admit(req.headers.get(EPOCH_HEADER));
          // Nor does a fenced host take a VM in by migration (its QEMU would run the guest without a lease).
          if (agentLease && req.method === "POST" && ["/v1/agent/migrations/incoming", "/v1/agent/cold/incoming"].includes(new URL(req.url).pathname)) agentLease.assertHolding("take a VM in by migration");
        } catch (err) {
          return vigilErrorResponse(err instanceof VigilError ? err : new VigilError("VIGIL_INTERNAL", messageOf(err)));
        }
        return app.fetch(req, { transport: "cluster", remoteAddress: socket?.remoteAddress });
      };
      clusterServer = createAdaptorServer({ fetch: serveCluster, createServer: createHttpsServer, serverOptions: mtlsServerOptions(agentCreds.bundle) });
      await listenOn(clusterServer, clusterWhere, options.cluster!.listen);
      servers.push(clusterServer);
    }
    rmSync(home.socket, { force: true });
    unixServer = createAdaptorServer({ fetch: serve("unix") });
    await listenOn(unixServer, home.socket, `the socket ${home.socket}`);
    servers.push(unixServer);

    recovered = await vms.recover();
    await recordings.recover();
    // After recover(): the VM states say which taps stay; its listeners re-install the firewall and re-open the
    // forwards. A switch that cannot be rebuilt (or firewalled) is logged, not fatal.
    const switchState = await network.reconcile().catch((err: unknown) => {
      log.error({ err: messageOf(err) }, "Cannot rebuild vigil's network namespace: bridged NICs will not attach");
      return undefined;
    });
    await snapshots.recoverInterrupted();
    // A deleted VM's forwards go with it. (Forwards of plugged-in NICs re-open, and the taps that stayed get their
    // rules back, through the switch's change listeners, which reconcile() runs.)
    vis.followVmRemovals();
    for (const l of imageLeftovers) {
      await audit.append({ actor: SYSTEM_ACTOR.name, action: "image.leftover-erased", target: { kind: "host", name: hostName }, result: "ok", details: { ...l, reason: "staging left by an interrupted image import" } });
    }
    await audit.append({ actor: SYSTEM_ACTOR.name, action: "daemon.start", target: { kind: "host", name: hostName }, result: "ok", details: { version: VERSION, pid: process.pid, accelerator: accel.accel, accelReason: accel.reason, ...recovered, ...(switchState && switchState.networks > 0 ? { networks: switchState.networks } : {}) } });
    markReady();
  } catch (err) {
    // Leave nothing behind: no socket, no pid file, no open database; the caller exits.
    await close().catch(() => undefined);
    throw err;
  }
  log.info({ home: home.home, socket: home.socket, http: tcpAddress ? `${tcpAddress.host}:${tcpAddress.port}` : null, ...(tls ? { tls: true, tlsFingerprint: tls.fingerprint } : {}), accelerator: accel.accel, reason: accel.reason, ...recovered }, "vigil is serving");
  for (const server of servers) {
    const transport = server === unixServer ? "unix" : server === clusterServer ? "cluster" : "tcp";
    // On the cluster listener only the manager's certificate may open a console (acting for its user), as for JSON.
    const gate = transport === "cluster" ? (req: IncomingMessage, socket: Socket) => {
      requirePeerRole(peerIdentity(socket as TLSSocket), "manager");
      agentLease?.admit(headerOf(req, EPOCH_HEADER) ?? null);
    } : undefined;
    // The browser's console (a WebSocket, daemon/web-console.ts) beside the CLI's raw vigil-console upgrade.
    const web = transport === "cluster" ? undefined : createWebConsole(deps, transport, transport === "tcp" && tls !== undefined);
    if (web) webConsoles.push(web);
    server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
      if (web && isWebSocketUpgrade(req)) return void web.upgrade(req, socket, head);
      void consoleUpgrade(deps, transport, req, socket, gate);
    });
  }

  rescans.start();
  stopExpiry = startExpiryWatch({ repo, vms, audit, log, action: config.policy.expiredVms }, config.policy.expiryCheckSeconds * 1000);

  return { home, app, deps, repo, tcpAddress, tlsFingerprint: tls?.fingerprint, close };
}

/**
 * The interactive console: `GET /v1/vms/NAME/console` with `Upgrade: vigil-console` becomes a raw byte stream
 * to the VM's serial port. Authentication and authorization are the same as for any route.
 */
async function consoleUpgrade(d: ApiDeps, transport: "unix" | "tcp" | "cluster", req: IncomingMessage, socket: Socket, gate?: (req: IncomingMessage, socket: Socket) => void): Promise<void> {
  const refuse = (err: VigilError): void => void socket.end(rawErrorResponse(err));
  socket.on("error", () => socket.destroy());
  try {
    const m = /^\/v1\/vms\/([a-z][a-z0-9-]{0,62})\/console$/.exec(new URL(req.url ?? "/", "http://x").pathname);
    if (!m || req.headers.upgrade?.toLowerCase() !== "vigil-console") return refuse(new VigilError("VIGIL_NOT_FOUND", "Only /v1/vms/NAME/console can be upgraded (Upgrade: vigil-console)"));
    gate?.(req, socket);
    const actor = await authenticateRequest(d.users, d.localUser, transport, req.headers.authorization, headerOf(req, ACTOR_HEADER));
    if (!actor) return refuse(new VigilError("VIGIL_UNAUTHENTICATED", "A valid token is required"));
    const ctx: RequestContext = { actor, requestId: crypto.randomUUID() };
    const serialPath = await d.vms.openConsole(ctx, m[1]!);
    const serial = connect(serialPath);
    serial.once("connect", () => {
      socket.write("HTTP/1.1 101 Switching Protocols\r\nupgrade: vigil-console\r\nconnection: Upgrade\r\n\r\n");
      socket.pipe(serial);
      serial.pipe(socket);
    });
    serial.on("error", (err) => refuse(new VigilError("VIGIL_QEMU", `Cannot connect to the serial console: ${err.message}`)));
    serial.on("close", () => socket.end());
    socket.on("close", () => serial.destroy());
  } catch (err) {
    refuse(err instanceof VigilError ? err : new VigilError("VIGIL_INTERNAL", "Internal error"));
  }
}

const headerOf = (req: IncomingMessage, name: string): string | undefined => {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
};

/** `vigil serve --cluster`: the manager (loaded only then; it shares this module's helpers). */
export async function runClusterManager(o: import("./manager.ts").ManagerOptions): Promise<void> {
  const { runManager } = await import("./manager.ts");
  return runManager(o);
}

/** Runs the daemon until SIGTERM/SIGINT. */
export async function runDaemon(options: DaemonOptions): Promise<void> {
  const daemon = await startDaemon(options);
  const stop = () => {
    void daemon.close().then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
