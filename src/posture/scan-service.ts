/**
 * `vigil scan VM` and the data a scan compares against (issue 13, items 2-4 and 6; docs/transience.md "Offline
 * scan"). A scan reads the dormant VM's disks in a child process (scan-runner.ts) under the VM's lock, so the VM
 * cannot start while its disks are read; the result becomes the VM's posture record (posture-service.ts
 * `recordScan`, which also lets a VM the gate quarantined out when it is now current).
 *
 * The advisory source (a `Packages` index or an apt lists directory, optionally the security tracker's JSON) and
 * the YARA rules are host settings kept in the inventory's kv table: changing them is a security decision (it decides
 * who is `vulnerable` or `infected`, hence who lands in quarantine), so it needs `vm.quarantine`, as the gate policy
 * does. The default source is the host's own apt lists, the real data the issue names.
 */
import { existsSync } from "node:fs";
import type { Kysely } from "kysely";
import type { Guard, RequestContext } from "../auth/guard.ts";
import { VigilError, q } from "../errors.ts";
import type { Database } from "../inventory/schema.ts";
import type { Logger } from "../log.ts";
import type { VmRecord } from "../vm/vm-repository.ts";
import type { VmService } from "../vm/vm-service.ts";
import { diskFile } from "../vm/vm-view.ts";
import { loadAdvisories } from "./advisories.ts";
import type { ScanRecord } from "./posture-repository.ts";
import type { PostureService } from "./posture-service.ts";
import type { Posture } from "./posture-state.ts";
import { runScanChild } from "./scan-runner.ts";
import type { ScanChildRequest, ScanChildResult } from "./scan-types.ts";
import { compileRules, DEFAULT_SCAN_LIMITS, MAX_RULES_BYTES } from "./signature-scan.ts";

export const DEFAULT_ADVISORY_SOURCE = { from: "/var/lib/apt/lists" };
const ADVISORIES_KEY = "posture.advisories";
const RULES_KEY = "posture.rules";
/** A scan of a big image with many files runs a while; past this it is stopped and recorded as failed. */
export const SCAN_TIMEOUT_MS = 10 * 60_000;

export interface AdvisorySource {
  from: string;
  tracker?: string;
  release?: string;
}

export interface ScanServiceDeps {
  db: Kysely<Database>;
  vms: VmService;
  posture: PostureService;
  guard: Guard;
  log: Logger;
  /** Directories every layer of a VM's disks may lie in: the VMs' dirs, imported images, the image cache. */
  roots: string[];
}

export interface ScanResult {
  vm: string;
  posture: Posture;
  released: boolean;
  scan: ScanRecord;
  timings: ScanChildResult["timings"];
}

export class ScanService {
  /** sha256 of the advisory data and rules as last loaded, for postures computed between scans. */
  #current: { advisoriesSha256?: string; rulesSha256?: string } = {};
  /** The first load, on first use: not at daemon start, where most daemons never compute a posture. */
  #loaded: Promise<void> | undefined;

  constructor(private readonly d: ScanServiceDeps) {}

  async current(): Promise<{ advisoriesSha256?: string; rulesSha256?: string }> {
    await (this.#loaded ??= this.load());
    return this.#current;
  }

  private async kv(key: string): Promise<string | undefined> {
    return (await this.d.db.selectFrom("kv").select("value").where("key", "=", key).executeTakeFirst())?.value;
  }

  private async setKv(key: string, value: string): Promise<void> {
    await this.d.db.insertInto("kv").values({ key, value }).onConflict((oc) => oc.column("key").doUpdateSet({ value })).execute();
  }

  async advisorySource(): Promise<AdvisorySource> {
    const raw = await this.kv(ADVISORIES_KEY);
    return raw ? (JSON.parse(raw) as AdvisorySource) : DEFAULT_ADVISORY_SOURCE;
  }

  async rules(): Promise<string> {
    return (await this.kv(RULES_KEY)) ?? "";
  }

  /**
   * What "current" means for postures until the first scan or update (a load that fails is logged). A value an
   * update or a scan set meanwhile is newer and stays.
   */
  private async load(): Promise<void> {
    try {
      const rulesSha256 = compileRules(await this.rules()).sha256;
      const advisoriesSha256 = (await loadAdvisories((await this.advisorySource()).from, await this.trackerOptions())).sha256;
      this.#current = { rulesSha256, advisoriesSha256, ...this.#current };
    } catch (err) {
      this.d.log.warn({ err: (err as Error).message }, "advisory data not loaded: postures are computed without it until `vigil advisories update`");
    }
  }

  private async trackerOptions(): Promise<{ tracker?: string; release?: string }> {
    const s = await this.advisorySource();
    return { ...(s.tracker ? { tracker: s.tracker } : {}), ...(s.release ? { release: s.release } : {}) };
  }

  /** `vigil advisories update --from FILE|DIR [--tracker FILE]`: loaded (checked) first, then recorded. */
  async updateAdvisories(ctx: RequestContext, input: { from?: unknown; tracker?: unknown; release?: unknown }): Promise<{ source: AdvisorySource; sha256: string; indexes: { path: string; packages: number; signature: string; date?: string }[]; tracker?: { release: string; sha256: string } }> {
    const str = (v: unknown, field: string): string | undefined => {
      if (v === undefined) return undefined;
      if (typeof v !== "string" || !v.startsWith("/") || v.length > 4096) throw new VigilError("VIGIL_BAD_REQUEST", `${field} must be an absolute path on the daemon's host`, { field });
      return v;
    };
    const from = str(input.from, "from") ?? DEFAULT_ADVISORY_SOURCE.from;
    const tracker = str(input.tracker, "tracker");
    if (input.release !== undefined && (typeof input.release !== "string" || !/^[a-z]{2,20}$/.test(input.release))) throw new VigilError("VIGIL_BAD_REQUEST", "release must be a Debian codename (e.g. bookworm)", { field: "release" });
    const source: AdvisorySource = { from, ...(tracker ? { tracker } : {}), ...(typeof input.release === "string" ? { release: input.release } : {}) };
    return this.d.guard.run(ctx, { action: "posture.advisories.update", permission: "vm.quarantine", target: { kind: "host", name: "advisories" }, details: { ...source } }, async () => {
      const a = await loadAdvisories(from, { ...(tracker ? { tracker } : {}), ...(source.release ? { release: source.release } : {}) });
      await this.setKv(ADVISORIES_KEY, JSON.stringify(source));
      this.#current.advisoriesSha256 = a.sha256;
      return {
        source,
        sha256: a.sha256,
        indexes: a.indexes.map((i) => ({ path: i.path, packages: i.packages, signature: i.release?.signature ?? "unsigned", ...(i.release?.dateIso ? { date: i.release.dateIso } : {}) })),
        ...(a.tracker ? { tracker: { release: a.tracker.descriptor.release, sha256: a.tracker.descriptor.sha256 } } : {}),
      };
    });
  }

  /** `vigil scan rules set FILE`: the rules' text, compiled (checked) first. */
  async setRules(ctx: RequestContext, input: { rules?: unknown }): Promise<{ rulesSha256: string; bytes: number }> {
    if (typeof input.rules !== "string") throw new VigilError("VIGIL_BAD_REQUEST", "rules must be the YARA rules' text", { field: "rules" });
    if (Buffer.byteLength(input.rules) > MAX_RULES_BYTES) throw new VigilError("VIGIL_BAD_REQUEST", `The YARA rules are larger than ${MAX_RULES_BYTES} bytes`, { field: "rules" });
    const text = input.rules;
    return this.d.guard.run(ctx, { action: "posture.rules.set", permission: "vm.quarantine", target: { kind: "host", name: "rules" }, details: { bytes: Buffer.byteLength(text) } }, async () => {
      const compiled = compileRules(text); // authorized first: a refusal to compile is the caller's error, audited
      await this.setKv(RULES_KEY, text);
      this.#current.rulesSha256 = compiled.sha256;
      return { rulesSha256: compiled.sha256, bytes: Buffer.byteLength(text) };
    }, (r) => ({ rulesSha256: r.rulesSha256 }));
  }

  /** `vigil scan VM`: an offline scan of a stopped VM's disks, recorded as its posture. */
  async scan(ctx: RequestContext, name: string): Promise<ScanResult> {
    return this.d.vms.operate(ctx, name, { action: "posture.scan", permission: "vm.control", details: { how: "offline" } }, async (h) => {
      if (h.vm.state !== "stopped" && h.vm.state !== "crashed") {
        throw new VigilError("VIGIL_INVALID_STATE", `Cannot scan VM ${q(h.vm.name)} offline: it is ${h.vm.state} (its disks are changing); stop it first`);
      }
      return this.scanLocked(h.vm);
    }, (r) => ({ state: r.posture.state, packages: r.scan.packages.length, pending: r.scan.pending.length, findings: r.scan.findings.length, advisoriesSha256: r.scan.advisoriesSha256, rulesSha256: r.scan.rulesSha256, released: r.released }));
  }

  /**
   * The scan itself, for a caller that holds the VM's lock and has decided it may run: `scan` above, and the gate
   * before a gated VM's first instruction (QEMU is up but paused, so the disks do not change while they are read).
   */
  async scanLocked(vm: VmRecord): Promise<ScanResult> {
    const disksDir = this.d.vms.layoutOf(vm).disksDir;
    const request: ScanChildRequest = {
      disks: vm.spec.disks.map((disk) => ({ name: disk.name, path: diskFile(disksDir, disk.name) })),
      // A root that does not exist (no image cache yet) holds no layer: left out, not an error.
      roots: this.d.roots.filter((r) => existsSync(r)),
      rules: await this.rules(),
      signatureLimits: DEFAULT_SCAN_LIMITS,
      advisories: await this.advisorySource(),
    };
    const started = new Date().toISOString();
    const r = await runScanChild<ScanChildResult>(request, SCAN_TIMEOUT_MS);
    const sig = r.signatures;
    const notes = [...r.notes, ...(sig?.skipped ?? []).slice(0, 50).map((s) => `not scanned for signatures: ${s.path}: ${s.reason}`), ...(sig && !sig.complete ? [`signature scan incomplete: ${sig.stoppedBecause}`] : [])];
    const record: ScanRecord = {
      scannedAt: started,
      how: "offline",
      advisoriesSha256: r.advisoriesSha256,
      rulesSha256: r.rulesSha256,
      complete: sig ? sig.complete : false,
      ...(r.os ? { os: r.os } : {}),
      packages: r.packages,
      pending: r.pending,
      findings: (sig?.findings ?? []).map((f) => ({ path: f.path, rule: f.rule, pattern: f.pattern, offset: f.offset, excerptHex: f.excerptHex })),
      notes,
      elapsedMs: r.timings.advisoriesMs + r.timings.scanMs,
    };
    this.#current = { advisoriesSha256: r.advisoriesSha256, rulesSha256: r.rulesSha256 };
    const { posture, released } = await this.d.posture.recordScan(vm, record);
    return { vm: vm.name, posture, released, scan: record, timings: r.timings };
  }
}
