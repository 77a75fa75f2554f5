/**
 * The manager's hosts: their records (PostgreSQL `hosts`), one mutual-TLS client per agent (pinned to the
 * certificate issued at `host add`), and the heartbeat that keeps `ready`/`unreachable` and each host's last
 * status (memory, CPUs, VMs) current. A host that misses `missesToUnreachable` heartbeats is `unreachable` and its
 * VMs are shown `unknown`; nothing is restarted elsewhere because of it (docs/cluster.md, "Leases and fencing").
 */
import { issueCertificate, type Ca } from "./ca.ts";
import { AgentClient, parseAddress } from "./agent-client.ts";
import type { ClusterHost, ClusterRepository } from "./cluster-repository.ts";
import type { CertBundle, DelegatedActor, HostStatus } from "./types.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import { isExpired, type Lease } from "./leases.ts";

/** The actor the manager's own calls (heartbeats, reconcile) run as on the agents. */
export const MANAGER_ACTOR: DelegatedActor = { name: "system", roles: ["admin"], groups: [], introspect: false };

export interface HostRegistryOptions {
  heartbeatMs?: number;
  missesToUnreachable?: number;
  log: { info(o: object, m: string): void; warn(o: object, m: string): void };
  event(kind: string, subject: string, payload: Record<string, unknown>): Promise<void>;
  /** A host's lease (host_leases, docs/cluster.md "Fencing, wired"): its epoch goes with every call; expired = fenced. */
  lease?: ((host: string) => Promise<Lease | undefined>) | undefined;
  now?: (() => number) | undefined;
  /** Runs after every heartbeat (HA planning). */
  afterBeat?: (() => Promise<void>) | undefined;
}

const NAME_RE = /^[a-z][a-z0-9-]{0,62}$/;

export class HostRegistry {
  private readonly clients = new Map<string, AgentClient>();
  private readonly misses = new Map<string, number>();
  private readonly statuses = new Map<string, HostStatus>();
  private readonly states = new Map<string, ClusterHost["state"]>();
  private timer: NodeJS.Timeout | undefined;
  private beating = false;

  constructor(private readonly repo: ClusterRepository, private readonly ca: Ca, private readonly o: HostRegistryOptions) {}

  /** Loads the hosts and beats once, so `isReady` is true for every answering host when the manager serves. */
  async start(): Promise<void> {
    for (const h of await this.repo.listHosts()) {
      this.states.set(h.name, h.state);
      if (h.status) this.statuses.set(h.name, h.status);
    }
    await this.beat();
    this.timer = setInterval(() => void this.beat(), this.o.heartbeatMs ?? 2000);
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }

  /** Issues the agent's certificate (SAN = its IP) and records the host. The bundle goes to its operator once. */
  async add(name: string, address: string): Promise<{ host: ClusterHost; credentials: CertBundle }> {
    if (!NAME_RE.test(name)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid host name ${q(name)}: lower-case letters, digits and -, starting with a letter`, { field: "name" });
    const { host } = parseAddress(address);
    if (await this.repo.findHost(name)) throw new VigilError("VIGIL_CONFLICT", `Host ${q(name)} is already in this cluster`, { field: "name" });
    const credentials = await issueCertificate(this.ca, { role: "agent", name, ips: [host] });
    const { fingerprintOf } = await import("./ca.ts");
    const record = await this.repo.addHost({ name, address, certFingerprint: fingerprintOf(credentials.certPem), state: "unreachable" });
    this.states.set(name, "unreachable");
    await this.o.event("host.added", name, { address });
    return { host: record, credentials };
  }

  async remove(name: string): Promise<void> {
    await this.repo.getHost(name);
    this.clients.get(name)?.close();
    this.clients.delete(name);
    this.statuses.delete(name);
    this.states.delete(name);
    await this.repo.deleteHost(name);
    await this.o.event("host.removed", name, {});
  }

  list(): Promise<ClusterHost[]> {
    return this.repo.listHosts();
  }

  /** The client of a host that exists (whatever its state). */
  async client(name: string): Promise<AgentClient> {
    const have = this.clients.get(name);
    if (have) return have;
    const h = await this.repo.findHost(name);
    if (!h) throw new VigilError("VIGIL_NOT_FOUND", `Host ${q(name)} is not in this cluster`, { field: "host" });
    const c = new AgentClient({ address: h.address, agentName: h.name, bundle: this.ca.manager, certFingerprint: h.certFingerprint });
    this.clients.set(name, c);
    return c;
  }

  isReady(name: string): boolean {
    return this.states.get(name) === "ready";
  }

  readyHosts(): string[] {
    return [...this.states].filter(([, s]) => s === "ready").map(([n]) => n);
  }

  status(name: string): HostStatus | undefined {
    return this.statuses.get(name);
  }

  /** The IP of a host's cluster listener (its underlay address). */
  async addressOf(name: string): Promise<string | undefined> {
    const h = await this.repo.findHost(name);
    return h ? parseAddress(h.address).host : undefined;
  }

  /** The epoch of the host's lease, sent with every call to it (undefined: the host holds no lease). */
  async epochOf(name: string): Promise<number | undefined> {
    return (await this.o.lease?.(name))?.epoch;
  }

  /** One heartbeat to every host; overlapping beats are skipped. */
  async beat(): Promise<void> {
    if (this.beating) return;
    this.beating = true;
    try {
      const hosts = await this.repo.listHosts();
      await Promise.all(hosts.map((h) => this.beatOne(h)));
      await this.o.afterBeat?.();
    } finally {
      this.beating = false;
    }
  }

  private async beatOne(h: ClusterHost): Promise<void> {
    // A host whose lease has expired is fenced (it stopped its VMs itself before then), whether it answers or not.
    const lease = await this.o.lease?.(h.name).catch((err: unknown) => void this.o.log.warn({ host: h.name, err: messageOf(err) }, "cannot read the host's lease"));
    if (lease && isExpired(lease, (this.o.now ?? Date.now)())) {
      if (this.states.get(h.name) !== "fenced") {
        this.states.set(h.name, "fenced");
        await this.repo.updateHost(h.name, { state: "fenced" }).catch(() => undefined);
        this.o.log.warn({ host: h.name, epoch: lease.epoch, expiresAt: lease.expiresAt }, "host is fenced: its lease expired");
        await this.o.event("host.fenced", h.name, { epoch: lease.epoch, expiresAt: lease.expiresAt, holder: lease.holder });
      }
      return;
    }
    try {
      const client = await this.client(h.name);
      const status = await client.request<HostStatus>("GET", "/v1/agent/status", { actor: MANAGER_ACTOR, timeoutMs: 5000, ...(lease ? { epoch: lease.epoch } : {}) });
      this.misses.set(h.name, 0);
      this.statuses.set(h.name, status);
      await this.repo.updateHost(h.name, { state: "ready", lastSeen: new Date().toISOString(), status });
      if (this.states.get(h.name) !== "ready") {
        this.states.set(h.name, "ready");
        this.o.log.info({ host: h.name }, "host is ready");
        await this.o.event("host.ready", h.name, {});
      }
    } catch (err) {
      const n = (this.misses.get(h.name) ?? 0) + 1;
      this.misses.set(h.name, n);
      if (n >= (this.o.missesToUnreachable ?? 3) && this.states.get(h.name) !== "unreachable") {
        this.states.set(h.name, "unreachable");
        await this.repo.updateHost(h.name, { state: "unreachable" }).catch(() => undefined);
        this.o.log.warn({ host: h.name, err: messageOf(err) }, "host is unreachable: its VMs are unknown");
        await this.o.event("host.unreachable", h.name, { error: messageOf(err) });
      }
    }
  }
}
