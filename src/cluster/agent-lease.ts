/**
 * The agent's side of leases, wired (docs/cluster.md "Fencing, wired"): `vigil agent --lease-db URL` acquires its
 * host's lease, keeps it alive with a SelfFence that stops every VM of the host when it cannot renew in time, and
 * an EpochGate that the cluster listener asks before a request reaches the app. After a self-fence the agent keeps
 * serving but starts no VM until it holds a lease again, at a NEW epoch (it re-tries every ttl/3; the old lease
 * must have expired first, so that whoever saw it expired may already have acted on it).
 */
import { VigilError, messageOf, q } from "../errors.ts";
import { EpochGate, LeaseStore, SelfFence, type FenceReport, type Lease, type Timers } from "./leases.ts";

export const DEFAULT_LEASE_TTL_MS = 15_000;
export const DEFAULT_LEASE_MARGIN_MS = 5_000;

export interface AgentLeaseOptions {
  store: LeaseStore;
  host: string;
  /** Who holds it (the host's name: an agent that restarts gets its own live lease back). */
  holder: string;
  ttlMs: number;
  marginMs: number;
  /** Stops every VM of this host; called once per fence. */
  stopVms: () => Promise<void>;
  /** After stopVms() (audit it). */
  onFenced?: (report: FenceReport) => Promise<void> | void;
  /** A lease acquired again after a fence. */
  onReacquired?: (lease: Lease) => Promise<void> | void;
  log: { info(o: object, m: string): void; warn(o: object, m: string): void };
  now?: () => number;
  timers?: Timers;
}

/** The lease an agent holds, its fence and its epoch gate. */
export class AgentLease {
  #fence: SelfFence;
  #gate: EpochGate;
  #lease: Lease;
  #retry: NodeJS.Timeout | undefined;
  #closed = false;
  private readonly o: AgentLeaseOptions;

  private constructor(o: AgentLeaseOptions, lease: Lease) {
    this.o = o;
    this.#lease = lease;
    // The gate starts at this agent's own epoch: nothing sent under an older lease of this host runs here.
    this.#gate = new EpochGate(lease.epoch);
    this.#fence = this.#arm(lease);
  }

  /** Acquires the host's lease (refused while another holder has a live one) and starts renewing it. */
  static async start(o: AgentLeaseOptions): Promise<AgentLease> {
    // SelfFence's own check, before the lease is taken: a bad margin leaves no lease behind.
    if (!Number.isSafeInteger(o.ttlMs) || o.ttlMs <= 0 || !Number.isSafeInteger(o.marginMs) || o.marginMs < 0 || o.marginMs >= o.ttlMs - Math.floor(o.ttlMs / 3)) {
      throw new VigilError("VIGIL_BAD_REQUEST", `The lease margin must be from 0 to below two thirds of the ttl (ttl ${q(o.ttlMs)} ms, margin ${q(o.marginMs)} ms)`, { field: "lease-margin" });
    }
    const lease = await o.store.acquire(o.host, o.holder);
    o.log.info({ host: o.host, epoch: lease.epoch, expiresAt: lease.expiresAt }, "holding the host's lease");
    return new AgentLease(o, lease);
  }

  /** The newest epoch this agent has accepted (HostStatus.epoch). */
  get epoch(): number {
    return this.#gate.newest;
  }

  /** "holding" while the lease is held; "fenced" from the self-fence until a new lease. */
  get state(): "holding" | "fenced" | "closed" {
    return this.#closed ? "closed" : this.#fence.state === "holding" ? "holding" : "fenced";
  }

  get lease(): Lease {
    return this.#lease;
  }

  /** The last fence, if any. */
  get lastFence(): FenceReport | undefined {
    return this.#fence.report;
  }

  /** Resolves when the current lease's fence has stopped the VMs. */
  whenFenced(): Promise<FenceReport> {
    return this.#fence.whenFenced();
  }

  /** The cluster listener's check of a request's x-vigil-epoch (the header's text, or undefined). */
  admit(header: string | undefined | null): number {
    return this.#gate.admit(header ?? undefined);
  }

  /** Throws unless the host holds its lease (a VM may start only then). */
  assertMayRun(vm: string): void {
    this.assertHolding(`start VM ${q(vm)}`);
  }

  /** Throws VIGIL_CONFLICT "Cannot <what>: host … fenced itself …" unless the host holds its lease. */
  assertHolding(what: string): void {
    if (this.state === "holding") return;
    const f = this.#fence.report;
    throw new VigilError(
      "VIGIL_CONFLICT",
      `Cannot ${what}: host ${q(this.o.host)} fenced itself${f ? ` at ${f.at} (${f.reason})` : ""} and holds no lease; VMs start again once it holds a new one`,
    );
  }

  /** Stops renewing (an orderly shutdown; the lease runs out by itself, nothing is stopped). */
  close(): void {
    this.#closed = true;
    this.#fence.close();
    if (this.#retry) clearTimeout(this.#retry);
  }

  #arm(lease: Lease): SelfFence {
    return new SelfFence({
      lease,
      ttlMs: this.o.ttlMs,
      marginMs: this.o.marginMs,
      renew: async (host, epoch) => {
        const l = await this.o.store.renew(host, epoch);
        this.#lease = l;
        return l;
      },
      stopVms: () => this.o.stopVms(),
      now: this.o.now ?? Date.now,
      ...(this.o.timers ? { timers: this.o.timers } : {}),
      onFenced: (report) => {
        this.o.log.warn({ ...report }, "self-fenced: this host's VMs are stopped until it holds a new lease");
        void Promise.resolve(this.o.onFenced?.(report)).catch((err: unknown) => this.o.log.warn({ err: messageOf(err) }, "cannot record the self-fence"));
        this.#scheduleReacquire(report.epoch);
      },
    });
  }

  #scheduleReacquire(fencedEpoch: number): void {
    if (this.#closed) return;
    this.#retry = setTimeout(() => void this.#reacquire(fencedEpoch), Math.max(100, Math.floor(this.o.ttlMs / 3)));
    this.#retry.unref();
  }

  async #reacquire(fencedEpoch: number): Promise<void> {
    this.#retry = undefined;
    if (this.#closed) return;
    let lease: Lease;
    try {
      lease = await this.o.store.acquire(this.o.host, this.o.holder);
    } catch (err) {
      this.o.log.warn({ host: this.o.host, err: messageOf(err) }, "cannot acquire the host's lease again yet");
      return this.#scheduleReacquire(fencedEpoch);
    }
    // The fenced lease may still be live (the fence is `margin` before it expires): it comes back unchanged to
    // its holder, but it is the lease that was given up, so wait for a new epoch.
    if (lease.epoch <= fencedEpoch || this.#closed) return this.#scheduleReacquire(fencedEpoch);
    this.#lease = lease;
    this.#gate = new EpochGate(Math.max(this.#gate.newest, lease.epoch));
    this.#fence = this.#arm(lease);
    this.o.log.info({ host: this.o.host, epoch: lease.epoch, expiresAt: lease.expiresAt }, "holding the host's lease again");
    await Promise.resolve(this.o.onReacquired?.(lease)).catch((err: unknown) => this.o.log.warn({ err: messageOf(err) }, "cannot record the new lease"));
  }
}
