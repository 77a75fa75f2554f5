/**
 * Host leases, fencing and HA restart planning (docs/cluster.md "Leases, fencing, HA").
 *
 * Each host holds one lease row (host_leases) with an epoch, the fencing token: a new epoch is handed out only when
 * no live lease exists, and a renewal is a compare-and-set on (epoch, expires_at), so two holders can never both
 * believe they hold the same live lease. The agent side has two guards: `EpochGate` refuses a command carrying an
 * epoch older than the newest it has seen, and `SelfFence` stops the host's VMs itself when it has not managed to
 * renew by `expires_at − margin`, so by the time anyone can see the lease expired its VMs are already stopped.
 * `planHaRestarts` restarts HA VMs only for hosts whose lease has expired, once per (VM, lost epoch).
 *
 * The SQL is plain Kysely (no dialect features) so it runs on SQLite and PostgreSQL alike; times are ISO-8601 text
 * compared in JS, and every write is conditioned on the row it read (no read-modify-write race on either).
 */
import type { Db } from "../inventory/db.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import { placeVm, validateDemand, type CapacityOptions } from "./placement.ts";
import { EPOCH_HEADER, type HostLoad } from "./types.ts";

/** One host's lease. Times are ISO-8601. */
export interface Lease {
  host: string;
  /** The fencing token: grows by one with every new holder. */
  epoch: number;
  holder: string;
  expiresAt: string;
  renewedAt: string;
}

/** Whether the lease has run out at `now` (ms since the epoch): at expires_at it is expired. */
export function isExpired(lease: Lease, now: number): boolean {
  return now >= Date.parse(lease.expiresAt);
}

const iso = (ms: number) => new Date(ms).toISOString();

function requireName(value: unknown, field: string, what: string): string {
  if (typeof value !== "string" || value === "" || value.length > 253) {
    throw new VigilError("VIGIL_BAD_REQUEST", `${what} must be a non-empty string of at most 253 characters, not ${q(value)}`, { field });
  }
  return value;
}

function requireEpoch(value: unknown, field: string): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
    throw new VigilError("VIGIL_BAD_REQUEST", `The epoch must be a whole number from 1, not ${q(value)}`, { field });
  }
  return value;
}

export interface LeaseStoreOptions {
  /** How long an acquired or renewed lease lives (ms). */
  ttlMs: number;
  /** The clock (ms since the epoch); injected in tests. */
  now?: () => number;
}

/** The host_leases table. */
export class LeaseStore {
  readonly ttlMs: number;
  private readonly db: Db;
  private readonly now: () => number;

  constructor(db: Db, opts: LeaseStoreOptions) {
    if (!Number.isSafeInteger(opts.ttlMs) || opts.ttlMs <= 0) {
      throw new VigilError("VIGIL_BAD_REQUEST", `The lease ttl must be a whole number of milliseconds above 0, not ${q(opts.ttlMs)}`, { field: "ttlMs" });
    }
    this.db = db;
    this.ttlMs = opts.ttlMs;
    this.now = opts.now ?? Date.now;
  }

  /** The host's lease, live or expired; undefined if it never had one. */
  async get(host: string): Promise<Lease | undefined> {
    const row = await this.db.selectFrom("host_leases").selectAll().where("host", "=", host).executeTakeFirst();
    return row && toLease(row);
  }

  /** Every host's lease, by host name. */
  async list(): Promise<Lease[]> {
    return (await this.db.selectFrom("host_leases").selectAll().orderBy("host").execute()).map(toLease);
  }

  /**
   * Takes the host's lease for `holder`. A host without a lease gets epoch 1; an expired lease is taken over with
   * epoch + 1. A live lease is refused (VIGIL_CONFLICT) unless `holder` already holds it, which returns it
   * unchanged (same epoch: a holder that asks twice is still the same holder).
   */
  async acquire(host: string, holder: string): Promise<Lease> {
    requireName(host, "host", "The host name");
    requireName(holder, "holder", "The lease holder");
    const now = this.now();
    const lease: Lease = { host, epoch: 1, holder, expiresAt: iso(now + this.ttlMs), renewedAt: iso(now) };
    const have = await this.get(host);
    if (!have) {
      try {
        await this.db.insertInto("host_leases").values(toRow(lease)).execute();
        return lease;
      } catch (err) {
        // Another holder inserted first (primary key): report what it holds.
        const now2 = await this.get(host);
        if (now2) throw leaseHeld(now2, "acquire");
        throw err;
      }
    }
    if (!isExpired(have, now)) {
      if (have.holder === holder) return have;
      throw leaseHeld(have, "acquire");
    }
    const next: Lease = { ...lease, epoch: have.epoch + 1 };
    const res = await this.db
      .updateTable("host_leases")
      .set(toRow(next))
      .where("host", "=", host)
      .where("epoch", "=", have.epoch)
      .where("expires_at", "=", have.expiresAt)
      .executeTakeFirst();
    if (res.numUpdatedRows !== 1n) {
      const other = await this.get(host);
      throw other ? leaseHeld(other, "acquire") : new VigilError("VIGIL_CONFLICT", `Cannot acquire the lease of host ${q(host)}: it changed while being taken`);
    }
    return next;
  }

  /**
   * Extends the lease by ttl, only while it is live and still at `epoch` (compare-and-set). Refused with
   * VIGIL_CONFLICT when another holder has taken it (the epoch moved on), when it has expired (someone may already be
   * restarting its VMs elsewhere: the holder must fence, not carry on), or when it does not exist.
   */
  async renew(host: string, epoch: number): Promise<Lease> {
    requireName(host, "host", "The host name");
    requireEpoch(epoch, "epoch");
    const now = this.now();
    const have = await this.get(host);
    if (!have) throw new VigilError("VIGIL_CONFLICT", `Cannot renew the lease of host ${q(host)}: it has no lease`);
    if (have.epoch !== epoch) {
      throw new VigilError("VIGIL_CONFLICT", `Cannot renew the lease of host ${q(host)} at epoch ${epoch}: the epoch moved on to ${have.epoch} (holder ${q(have.holder)})`);
    }
    if (isExpired(have, now)) {
      throw new VigilError("VIGIL_CONFLICT", `Cannot renew the lease of host ${q(host)} at epoch ${epoch}: it expired at ${have.expiresAt}`);
    }
    const next: Lease = { ...have, expiresAt: iso(now + this.ttlMs), renewedAt: iso(now) };
    const res = await this.db
      .updateTable("host_leases")
      .set({ expires_at: next.expiresAt, renewed_at: next.renewedAt })
      .where("host", "=", host)
      .where("epoch", "=", epoch)
      .where("expires_at", "=", have.expiresAt)
      .executeTakeFirst();
    if (res.numUpdatedRows !== 1n) {
      throw new VigilError("VIGIL_CONFLICT", `Cannot renew the lease of host ${q(host)} at epoch ${epoch}: it changed while being renewed`);
    }
    return next;
  }
}

function leaseHeld(l: Lease, action: string): VigilError {
  return new VigilError("VIGIL_CONFLICT", `Cannot ${action} the lease of host ${q(l.host)}: ${q(l.holder)} holds it (epoch ${l.epoch}) until ${l.expiresAt}`);
}

function toLease(r: { host: string; epoch: number; holder: string; expires_at: string; renewed_at: string }): Lease {
  return { host: r.host, epoch: Number(r.epoch), holder: r.holder, expiresAt: r.expires_at, renewedAt: r.renewed_at };
}

function toRow(l: Lease) {
  return { host: l.host, epoch: l.epoch, holder: l.holder, expires_at: l.expiresAt, renewed_at: l.renewedAt };
}

// ---------------------------------------------------------------------------------------------------------
// Agent side: the epoch gate.

/**
 * The agent's fencing-token check: a command's epoch must be at least the newest this agent has accepted. Newer
 * epochs raise the bar, so once a new lease holder has spoken, nothing sent under an older lease runs here.
 */
export class EpochGate {
  #newest: number;

  constructor(newest = 0) {
    this.#newest = newest;
  }

  /** The newest epoch accepted (reported in heartbeats). */
  get newest(): number {
    return this.#newest;
  }

  /** Accepts `value` (a number, or the x-vigil-epoch header text) or throws; returns the epoch. */
  admit(value: unknown): number {
    let epoch: unknown = value;
    if (typeof value === "string") epoch = /^[0-9]{1,15}$/.test(value) ? Number(value) : Number.NaN;
    if (value === undefined) {
      throw new VigilError("VIGIL_BAD_REQUEST", `A cluster command needs the ${EPOCH_HEADER} header (the host's lease epoch)`, { field: EPOCH_HEADER });
    }
    requireEpoch(epoch, EPOCH_HEADER);
    const e = epoch as number;
    if (e < this.#newest) {
      throw new VigilError("VIGIL_CONFLICT", `Cannot run the command: stale epoch ${e} (this host has accepted epoch ${this.#newest})`, { field: EPOCH_HEADER });
    }
    this.#newest = e;
    return e;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Agent side: self-fencing.

/** Timers, injectable so tests drive time. */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: Timers = {
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

export interface FenceReport {
  host: string;
  epoch: number;
  /** Why the agent fenced itself. */
  reason: string;
  /** When (ISO-8601). */
  at: string;
  /** The error of stopVms(), if it failed (it is not retried). */
  stopError?: string;
}

export interface SelfFenceOptions {
  /** The lease just acquired. */
  lease: Lease;
  ttlMs: number;
  /** Fence this long before expires_at, so the VMs are stopped before anyone can see the lease expired. */
  marginMs: number;
  /** Renews the lease (LeaseStore.renew); a VIGIL_CONFLICT means it is lost for good. */
  renew: (host: string, epoch: number) => Promise<Lease>;
  /** Stops every VM of this host. Called at most once. */
  stopVms: () => Promise<void>;
  now: () => number;
  timers?: Timers;
  onFenced?: (report: FenceReport) => void;
}

/**
 * Keeps the agent's lease alive (a renewal every ttl/3) and, when it cannot, stops the host's VMs itself: at
 * `expires_at − margin` without a renewal, or as soon as a renewal says the lease is lost. Fencing is final: the
 * VMs are stopped once, renewals stop, and the agent needs a new lease (a new epoch) to run VMs again.
 */
export class SelfFence {
  readonly host: string;
  readonly epoch: number;
  #expiresAt: number;
  #state: "holding" | "fenced" | "closed" = "holding";
  #tick: unknown;
  #deadline: unknown;
  #renewing = false;
  #lastError: string | undefined;
  #report: FenceReport | undefined;
  #fenced: Promise<FenceReport>;
  #resolveFenced!: (r: FenceReport) => void;
  private readonly opts: SelfFenceOptions;
  private readonly timers: Timers;

  constructor(opts: SelfFenceOptions) {
    if (!Number.isSafeInteger(opts.ttlMs) || opts.ttlMs <= 0) {
      throw new VigilError("VIGIL_BAD_REQUEST", `ttlMs must be a whole number of milliseconds above 0, not ${q(opts.ttlMs)}`, { field: "ttlMs" });
    }
    const interval = Math.floor(opts.ttlMs / 3);
    if (!Number.isSafeInteger(opts.marginMs) || opts.marginMs < 0 || opts.marginMs >= opts.ttlMs - interval) {
      throw new VigilError(
        "VIGIL_BAD_REQUEST",
        `marginMs must be a whole number from 0 to below ${opts.ttlMs - interval} (ttl − ttl/3, so a renewal is tried before the fence), not ${q(opts.marginMs)}`,
        { field: "marginMs" },
      );
    }
    this.opts = opts;
    this.timers = opts.timers ?? realTimers;
    this.host = opts.lease.host;
    this.epoch = opts.lease.epoch;
    this.#expiresAt = Date.parse(opts.lease.expiresAt);
    this.#fenced = new Promise((resolve) => (this.#resolveFenced = resolve));
    this.#scheduleTick();
    this.#armDeadline();
  }

  get state(): "holding" | "fenced" | "closed" {
    return this.#state;
  }

  /** When the lease now held runs out (ISO-8601). */
  get expiresAt(): string {
    return iso(this.#expiresAt);
  }

  /** The last renewal error, if the last renewal failed. */
  get lastError(): string | undefined {
    return this.#lastError;
  }

  get report(): FenceReport | undefined {
    return this.#report;
  }

  /** Resolves when the agent has fenced itself and stopVms() has returned. */
  whenFenced(): Promise<FenceReport> {
    return this.#fenced;
  }

  /** Stops renewing without fencing (an orderly shutdown). */
  close(): void {
    if (this.#state === "holding") this.#state = "closed";
    this.#clear();
  }

  #clear(): void {
    if (this.#tick !== undefined) this.timers.clearTimeout(this.#tick);
    if (this.#deadline !== undefined) this.timers.clearTimeout(this.#deadline);
    this.#tick = this.#deadline = undefined;
  }

  #scheduleTick(): void {
    this.#tick = this.timers.setTimeout(() => this.#renew(), Math.floor(this.opts.ttlMs / 3));
  }

  #armDeadline(): void {
    if (this.#deadline !== undefined) this.timers.clearTimeout(this.#deadline);
    const at = this.#expiresAt - this.opts.marginMs;
    this.#deadline = this.timers.setTimeout(() => this.#onDeadline(), Math.max(0, at - this.opts.now()));
  }

  #onDeadline(): void {
    this.#deadline = undefined;
    if (this.#state !== "holding") return;
    // A timer may fire early, or a renewal may have moved the deadline meanwhile: re-arm rather than fence.
    if (this.opts.now() < this.#expiresAt - this.opts.marginMs) return this.#armDeadline();
    const why = this.#lastError ? `: ${this.#lastError}` : " (renewal still pending)";
    void this.#fence(`lease not renewed by ${iso(this.#expiresAt - this.opts.marginMs)}, ${this.opts.marginMs} ms before it expires${why}`);
  }

  #renew(): void {
    this.#tick = undefined;
    if (this.#state !== "holding") return;
    this.#scheduleTick();
    if (this.#renewing) return; // the previous renewal still hangs: the deadline decides
    this.#renewing = true;
    this.opts
      .renew(this.host, this.epoch)
      .then((lease) => {
        if (this.#state !== "holding") return;
        if (lease.epoch !== this.epoch) return void this.#fence(`lease renewed at epoch ${lease.epoch}, not ${this.epoch}`);
        this.#lastError = undefined;
        this.#expiresAt = Date.parse(lease.expiresAt);
        this.#armDeadline();
      })
      .catch((err: unknown) => {
        if (this.#state !== "holding") return;
        this.#lastError = messageOf(err);
        // Lost for good (taken over, or expired in the store's view): fence now, not at the deadline.
        if (err instanceof VigilError && err.code === "VIGIL_CONFLICT") void this.#fence(`lease lost: ${this.#lastError}`);
      })
      .finally(() => {
        this.#renewing = false;
      });
  }

  async #fence(reason: string): Promise<void> {
    if (this.#state !== "holding") return;
    this.#state = "fenced";
    this.#clear();
    const report: FenceReport = { host: this.host, epoch: this.epoch, reason, at: iso(this.opts.now()) };
    try {
      await this.opts.stopVms();
    } catch (err) {
      report.stopError = messageOf(err);
    }
    this.#report = report;
    this.opts.onFenced?.(report);
    this.#resolveFenced(report);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Manager side: HA restarts.

/** A VM as HA planning sees it. */
export interface HaVm {
  name: string;
  /** The host the inventory says runs it. */
  host: string;
  ha: boolean;
  memoryMiB: number;
  vcpus: number;
}

/** A restart already done: `vm` was restarted because `host` lost its lease at `epoch`. */
export interface HaRestartDone {
  vm: string;
  epoch: number;
}

export interface HaPlanInput {
  hosts: HostLoad[];
  leases: Lease[];
  vms: HaVm[];
  restarts: HaRestartDone[];
  /** ms since the epoch. */
  now: number;
  capacity?: CapacityOptions;
}

export interface HaPlan {
  restarts: { vm: string; from: string; lostEpoch: number; to: string; reasons: string[] }[];
  /** HA VMs of hosts that are not ready but not fenced either: nothing is restarted (yet). */
  waiting: { vm: string; host: string; reason: string }[];
  /** HA VMs of fenced hosts that no live host can take now. */
  unplaced: { vm: string; from: string; lostEpoch: number; reasons: string[] }[];
  /** HA VMs already restarted for this lost epoch. */
  done: { vm: string; from: string; lostEpoch: number }[];
}

/**
 * Which HA VMs to restart where. Only VMs of hosts whose lease has expired (the host has fenced itself, or is
 * gone): a host that merely does not answer may still run them. Targets are ready hosts with a live lease,
 * chosen by placeVm with the restarts planned so far counted in (largest VM first). A (VM, lost epoch) in
 * `restarts` is never planned again.
 */
export function planHaRestarts(input: HaPlanInput): HaPlan {
  if (typeof input.now !== "number" || !Number.isFinite(input.now)) throw new VigilError("VIGIL_BAD_REQUEST", `now must be a time in ms, not ${q(input.now)}`, { field: "now" });
  const leases = new Map(input.leases.map((l) => [l.host, l]));
  const hostsByName = new Map(input.hosts.map((h) => [h.name, h]));
  const done = new Set(input.restarts.map((r) => `${r.vm}\u0000${r.epoch}`));
  const names = new Set<string>();
  input.vms.forEach((v, i) => {
    requireName(v.name, `vms.${i}.name`, "A VM name");
    requireName(v.host, `vms.${i}.host`, "A VM's host");
    if (names.has(v.name)) throw new VigilError("VIGIL_BAD_REQUEST", `VM ${q(v.name)} is listed twice`, { field: `vms.${i}.name` });
    names.add(v.name);
    if (typeof v.ha !== "boolean") throw new VigilError("VIGIL_BAD_REQUEST", `ha of VM ${q(v.name)} must be true or false`, { field: `vms.${i}.ha` });
    validateDemand(v, `vms.${i}`);
  });
  const live = (host: string) => {
    const l = leases.get(host);
    return l !== undefined && !isExpired(l, input.now);
  };
  // Receivers: ready hosts with a live lease. Their loads grow as restarts are planned.
  const receivers: HostLoad[] = input.hosts.filter((h) => h.ready && live(h.name)).map((h) => ({ ...h, vms: [...h.vms] }));
  const excluded = input.hosts.filter((h) => !(h.ready && live(h.name))).map((h) => `${q(h.name)} (${!h.ready ? "not ready" : leases.has(h.name) ? "lease expired" : "no lease"})`);
  const plan: HaPlan = { restarts: [], waiting: [], unplaced: [], done: [] };
  const lost: { vm: HaVm; lease: Lease }[] = [];
  for (const vm of input.vms.filter((v) => v.ha)) {
    const lease = leases.get(vm.host);
    if (lease && isExpired(lease, input.now)) {
      if (done.has(`${vm.name}\u0000${lease.epoch}`)) plan.done.push({ vm: vm.name, from: vm.host, lostEpoch: lease.epoch });
      else lost.push({ vm, lease });
      continue;
    }
    if (hostsByName.get(vm.host)?.ready === true) continue; // healthy host, nothing to say
    plan.waiting.push({
      vm: vm.name,
      host: vm.host,
      reason: lease
        ? `host ${q(vm.host)} is not ready but its lease (epoch ${lease.epoch}) is valid until ${lease.expiresAt}: not fenced, not restarted`
        : `host ${q(vm.host)} is not ready and has no lease: it cannot be known to be fenced, not restarted`,
    });
  }
  lost.sort((a, b) => b.vm.memoryMiB - a.vm.memoryMiB || (a.vm.name < b.vm.name ? -1 : 1));
  for (const { vm, lease } of lost) {
    const why = `host ${q(vm.host)} lost its lease (epoch ${lease.epoch} expired at ${lease.expiresAt})`;
    const p = placeVm(receivers, vm, input.capacity);
    if (!p.ok) {
      const reasons = [why, receivers.length === 0 ? "no ready host holds a live lease" : p.message];
      if (excluded.length > 0) reasons.push(`not considered: ${excluded.join(", ")}`);
      plan.unplaced.push({ vm: vm.name, from: vm.host, lostEpoch: lease.epoch, reasons });
      continue;
    }
    receivers.find((h) => h.name === p.host)!.vms.push({ name: vm.name, memoryMiB: vm.memoryMiB, vcpus: vm.vcpus });
    plan.restarts.push({ vm: vm.name, from: vm.host, lostEpoch: lease.epoch, to: p.host, reasons: [why, ...p.reasons] });
  }
  return plan;
}
