/**
 * Capability and parameter negotiation (docs/cluster.md "Negotiation"): a pure rule over what each end's QEMU
 * reports (qemu-report.ts), computed by the manager before anything is created on the target. Either a plan — the
 * migration capabilities the source enables, every one of them present at both ends — or a refusal naming each
 * missing capability, parameter or object type and the host that lacks it, and each hardware mismatch.
 */
import { VigilError, q } from "../errors.ts";

/** What one host's QEMU can do, as its agent reports it. */
export interface QemuReport {
  /** The host the report is from (for messages). */
  host: string;
  /** QEMU's version, "MAJOR.MINOR.MICRO". */
  version: string;
  /** The names `query-migrate-capabilities` lists. */
  capabilities: string[];
  /** The names `query-migrate-parameters` returns. */
  parameters: string[];
  /** The object types the migration needs that this QEMU has (of tls-creds-x509, authz-simple). */
  objectTypes: string[];
  /** The machine types it can run (`query-machines`); the source reports the VM's own. */
  machines: string[];
  /** The CPU models it knows (`query-cpu-definitions`), each with whether QEMU calls it migration-safe. */
  cpus: { name: string; migrationSafe: boolean }[];
}

/** The VM's virtual hardware (its spec): what the target must be able to run. */
export interface VmHardware {
  machine: string;
  cpu: string;
}

/** Capabilities a migration cannot go without, at both ends (why: docs/cluster.md "Negotiation"). */
export const REQUIRED_CAPABILITIES = ["return-path", "pause-before-switchover", "events"] as const;
/** Parameters the engine sets (precopy.ts, incoming.ts): both ends must know them. */
export const REQUIRED_PARAMETERS = ["tls-creds", "tls-hostname", "tls-authz", "downtime-limit", "max-bandwidth"] as const;
/** QEMU's TLS: the credentials and the authorization of the peer's certificate. */
export const REQUIRED_OBJECT_TYPES = ["tls-creds-x509", "authz-simple"] as const;
/** Enabled when both ends have them. */
export const OPTIONAL_CAPABILITIES = ["auto-converge"] as const;
/** Known to QEMU 7.2, deliberately left off even when both have them (the reason is shown with the plan). */
export const DECLINED_CAPABILITIES: Record<string, string> = {
  multifd: "measured on these hosts: no faster for 1-vCPU guests (total median 126 ms vs 121 ms with one stream), and each channel is one more TLS stream through the relays that can fail",
  "postcopy-ram": "after the switchover the VM's RAM would live on two hosts: a failure then loses the VM",
  xbzrle: "trades source CPU (which the guest shares) for bandwidth; the downtime limit and auto-converge handle dirtying guests",
  compress: "as xbzrle, and slower than the link on these hosts",
};

export interface NegotiatedPlan {
  /** "cold": a stopped VM's disks are copied, no QEMU stream (absent: live). */
  how?: "live" | "cold";
  /** What the source enables with migrate-set-capabilities (the target enables the required ones it receives on). */
  capabilities: string[];
  /** Optional capabilities left off, each with why. */
  declined: { capability: string; reason: string }[];
  source: { host: string; version: string };
  target: { host: string; version: string };
  machine: string;
  cpu: string;
}

export type Negotiation = { ok: true; plan: NegotiatedPlan } | { ok: false; refusals: string[] };

/** "7.2.22" → [7, 2, 22]; anything else → undefined. */
function parseVersion(v: string): [number, number, number] | undefined {
  const m = /^(\d{1,4})\.(\d{1,4})\.(\d{1,4})$/.exec(v);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

function compareVersions(a: [number, number, number], b: [number, number, number]): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}

/**
 * The plan for migrating a VM with `vm`'s hardware from `source` to `target`, or every reason it cannot go.
 * Rules: the required capabilities, parameters and object types at both ends; the target's QEMU not older than
 * the source's (QEMU migrates forward, not back); the VM's machine type (pinned, e.g. pc-i440fx-7.2) runnable on
 * the target; its CPU model known there, and a model QEMU does not call migration-safe (`max`, `host`: their
 * features follow the QEMU version) only between equal versions.
 */
export function negotiate(source: QemuReport, target: QemuReport, vm: VmHardware): Negotiation {
  const refusals: string[] = [];
  const ends = [source, target];
  for (const end of ends) {
    for (const c of REQUIRED_CAPABILITIES) if (!end.capabilities.includes(c)) refusals.push(`host ${q(end.host)}: its QEMU lacks the migration capability ${q(c)} (required)`);
    for (const p of REQUIRED_PARAMETERS) if (!end.parameters.includes(p)) refusals.push(`host ${q(end.host)}: its QEMU lacks the migration parameter ${q(p)} (required)`);
    for (const o of REQUIRED_OBJECT_TYPES) if (!end.objectTypes.includes(o)) refusals.push(`host ${q(end.host)}: its QEMU lacks the object type ${q(o)} (TLS is required)`);
  }
  const sv = parseVersion(source.version);
  const tv = parseVersion(target.version);
  if (!sv) refusals.push(`host ${q(source.host)}: unreadable QEMU version ${q(source.version)}`);
  if (!tv) refusals.push(`host ${q(target.host)}: unreadable QEMU version ${q(target.version)}`);
  const sameVersion = sv !== undefined && tv !== undefined && compareVersions(sv, tv) === 0;
  if (sv && tv && compareVersions(tv, sv) < 0) refusals.push(`host ${q(target.host)}: its QEMU ${target.version} is older than the source's ${source.version} (QEMU migrates to the same or a newer version only)`);
  if (!target.machines.includes(vm.machine)) refusals.push(`host ${q(target.host)}: its QEMU cannot run the VM's machine type ${q(vm.machine)}`);
  const cpu = target.cpus.find((c) => c.name === vm.cpu);
  if (!cpu) refusals.push(`host ${q(target.host)}: its QEMU does not know the VM's CPU model ${q(vm.cpu)}`);
  else if (!cpu.migrationSafe && !sameVersion) refusals.push(`host ${q(target.host)}: the VM's CPU model ${q(vm.cpu)} is not migration-safe, so both QEMUs must be the same version (${source.version} here, ${target.version} there)`);
  if (refusals.length > 0) return { ok: false, refusals };

  const both = (c: string) => source.capabilities.includes(c) && target.capabilities.includes(c);
  const capabilities: string[] = [...REQUIRED_CAPABILITIES];
  const declined: NegotiatedPlan["declined"] = [];
  for (const c of OPTIONAL_CAPABILITIES) {
    if (both(c)) capabilities.push(c);
    else declined.push({ capability: c, reason: `not supported by ${[source, target].filter((e) => !e.capabilities.includes(c)).map((e) => q(e.host)).join(" and ")}` });
  }
  for (const [c, reason] of Object.entries(DECLINED_CAPABILITIES)) if (both(c)) declined.push({ capability: c, reason });
  return {
    ok: true,
    plan: { capabilities, declined, source: { host: source.host, version: source.version }, target: { host: target.host, version: target.version }, machine: vm.machine, cpu: vm.cpu },
  };
}

/**
 * A stopped VM's move: no migration stream, so no capability or version rule; the VM boots on the target later,
 * so the target's QEMU must run its machine type and know its CPU model.
 */
export function negotiateCold(source: Pick<QemuReport, "host" | "version">, target: QemuReport, vm: VmHardware): Negotiation {
  const refusals: string[] = [];
  if (!target.machines.includes(vm.machine)) refusals.push(`host ${q(target.host)}: its QEMU cannot run the VM's machine type ${q(vm.machine)}`);
  if (!target.cpus.some((c) => c.name === vm.cpu)) refusals.push(`host ${q(target.host)}: its QEMU does not know the VM's CPU model ${q(vm.cpu)}`);
  if (refusals.length > 0) return { ok: false, refusals };
  return { ok: true, plan: { how: "cold", capabilities: [], declined: [], source: { host: source.host, version: source.version }, target: { host: target.host, version: target.version }, machine: vm.machine, cpu: vm.cpu } };
}

/** `negotiate`, throwing the refusal as one VigilError (VIGIL_CONFLICT) that lists every reason. */
export function planMigration(source: QemuReport, target: QemuReport, vm: VmHardware): NegotiatedPlan {
  const r = negotiate(source, target, vm);
  if (!r.ok) throw new VigilError("VIGIL_CONFLICT", `Cannot migrate from ${q(source.host)} to ${q(target.host)}: ${r.refusals.join("; ")}`, { field: "to" });
  return r.plan;
}
