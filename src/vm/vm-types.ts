/**
 * The types VmService's callers and its parts share: its dependencies, the start/stop options and results, the
 * removal report, and the handle a capability gets while it holds a VM's lock. They live apart from the facade
 * so the parts (vm-lifecycle, vm-creation, …) can use them without importing the facade that imports them.
 */
import type { Logger } from "../log.ts";
import type { HomeLayout, VmLayout } from "../paths.ts";
import type { AccelChoice } from "../qemu/accel.ts";
import type { VmRuntime } from "../host/vm-runtime.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Guard } from "../auth/guard.ts";
import type { UserStore } from "../auth/users.ts";
import type { ImageCatalog } from "../image/catalog.ts";
import type { DataRegistry } from "../provenance/data-registry.ts";
import type { LocationHistory } from "../provenance/locations.ts";
import type { HostFacts } from "./host-limits.ts";
import type { QuotaLimits } from "../config.ts";
import type { VmRecord, VmRepository } from "./vm-repository.ts";
import type { GenerationLog } from "../vtime/generations.ts";
import type { NicPlumber, SwitchView } from "../network/types.ts";

export interface VmPolicy {
  /** Refuse VMs without approver, purpose and expiry. */
  requireOwnership: boolean;
  /** "stop": expired VMs are stopped and may not be started again (default "flag": shown as expired only). */
  expiredVms?: "flag" | "stop" | undefined;
}

export interface VmServiceDeps {
  repo: VmRepository;
  catalog: ImageCatalog;
  guard: Guard;
  audit: AuditLog;
  users: UserStore;
  registry: DataRegistry;
  locations: LocationHistory;
  home: HomeLayout;
  hostName: string;
  accel: AccelChoice;
  policy: VmPolicy;
  generations: GenerationLog;
  log: Logger;
  /** Facts about this host that bound a VM (memory); read from /proc when not given (tests inject them). */
  hostFacts?: (() => HostFacts) | undefined;
  /** The site's per-owner quota defaults (config `quotas`); users may have their own. */
  quotas?: QuotaLimits | undefined;
  /** The console log cap: console.log is rotated into console.log.1 past this size (host/console-log.ts). */
  consoleLogMaxBytes?: number | undefined;
  /**
   * The switch (network/network-service.ts): plugs a bridged NIC's tap in before QEMU starts, unplugs it after
   * (absent: no VM with a bridged NIC may start); `attached` lets a VM reattached after a restart show its NICs,
   * `netns` names the namespace in `showcmd`.
   */
  network?: (NicPlumber & Partial<Pick<SwitchView, "attached" | "netns">>) | undefined;
  /** `--shared-storage DIR` (src/cluster/shared-storage.ts): where `storage: "shared"` VMs keep their disks. */
  sharedStorage?: string | undefined;
}

/** Runs between QEMU start and `cont` (e.g. loading a saved state). Registered by capabilities at wiring. */
export type BeforeContHook = (vm: VmRecord, rt: VmRuntime) => Promise<void>;

/** What a capability may do with a VM while it holds the VM's operation lock (see `VmService.operate`). */
export interface LockedVm {
  /** The VM as stored now. */
  vm: VmRecord;
  layout: VmLayout;
  reload(): Promise<VmRecord>;
  update(change: Parameters<VmRepository["update"]>[1]): Promise<VmRecord>;
  /** The runtime of a running or paused VM. */
  runtime(): VmRuntime;
  start(options?: StartOptions): Promise<VmRecord>;
  stop(timeoutMs?: number): Promise<StopResult>;
  kill(reason: string): Promise<void>;
}

export interface StartOptions {
  /** Runs after QEMU is up and before the guest's first instruction. */
  beforeCont?: ((rt: VmRuntime) => Promise<void>) | undefined;
  /** Wait until the guest agent answers a ping. */
  wait?: boolean | undefined;
  waitTimeoutMs?: number | undefined;
  /** Leave the guest paused at its first instruction. */
  paused?: boolean | undefined;
  /**
   * Record this run (src/recording): QEMU, under TCG with icount, writes every non-deterministic input to `logFile`;
   * its UARTs are the FIFOs of the layout's `serialPipe`/`agentPipe`, made here, which the recorder serves.
   */
  record?: { logFile: string } | undefined;
}

export interface RemovalReport {
  id: string;
  name: string;
  destroyed: Array<{ path: string; purpose: string; bytes: number }>;
  unreachable: Array<{ path: string; host: string; purpose: string; why: string }>;
  /**
   * VMs made from this one (clones, imports of its bundles, and theirs in turn): they hold copies of its data
   * that are theirs now — a purge does not touch them, and says so.
   */
  derived: Array<{ name: string; kind: "clone" | "import"; from: string }>;
}

export interface StopResult {
  /** How the VM went down: the guest shut down on ACPI request, QEMU quit, or it was killed. */
  how: "acpi" | "quit" | "killed";
}
