/**
 * The dossier: everything that makes a VM *this* VM, as one versioned document that one agent exports and another
 * imports (docs/cluster.md, "Identity follows the VM"): its row (uuid, name, spec, owner, labels, lineage,
 * generation and vmgenid, security floor), its generation log, its firewall policy versions and quarantine, its
 * monotonic store namespace, its IDS watch, its location history, the addresses of its bridged NICs, and the
 * digests of the base images its disks and kernel come from. The target stores it in state `incoming` with the
 * same uuid and its own jail uid, plugs no NIC, and refuses — before writing anything — what it cannot honour.
 *
 * A dossier arrives from another host: it is hostile input. Every field is validated, every list and string is
 * bounded, the spec goes through the same schema as a stored one, each policy through the firewall's schema.
 */
import { realpathSync } from "node:fs";
import { z } from "zod";
import { VigilError, q } from "../errors.ts";
import { parseOrThrow } from "../validation.ts";
import type { RequestContext } from "../auth/guard.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Guard } from "../auth/guard.ts";
import type { Db } from "../inventory/db.ts";
import type { ImageCatalog } from "../image/catalog.ts";
import type { Logger } from "../log.ts";
import { imageInfo } from "../qemu/qemu-img.ts";
import { sha256File, type DataRegistry } from "../provenance/data-registry.ts";
import { vmNameSchema, vmSpecSchema, bridgedNics, type VmSpec } from "../vm/spec.ts";
import { assertAllowed } from "../vm/state-machine.ts";
import { VmRepository, type Lineage, type VmRecord } from "../vm/vm-repository.ts";
import type { VmService } from "../vm/vm-service.ts";
import { diskFile } from "../vm/vm-view.ts";
import { jailUidOf } from "../vm/jail-uids.ts";
import { postureTransferSchema, readPosture, removePosture, writePosture } from "../posture/posture-transfer.ts";
import { policySchema } from "../network/firewall/policy.ts";
import { MAX_INTERVAL_MS, MIN_INTERVAL_MS, WATCH_POLICIES } from "../introspection/service.ts";
import { DEFAULT_QUOTAS } from "../vtime/store.ts";

export const DOSSIER_FORMAT = "vigil.dossier";
export const DOSSIER_VERSION = 1;

/** Bounds of a dossier: what one VM can legitimately have (the store's quotas), with room, and never more. */
export const DOSSIER_LIMITS = {
  generations: 10_000,
  policyVersions: 1_000,
  locations: 10_000,
  counters: DEFAULT_QUOTAS.counters,
  records: DEFAULT_QUOTAS.records,
  recordBytes: DEFAULT_QUOTAS.recordBytes,
  labels: 64,
  floor: 64,
} as const;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const uuid = z.string().regex(UUID, "must be a lower-case UUID");
const sha256 = z.string().regex(/^[0-9a-f]{64}$/, "must be a sha256 in hex");
/** Timestamps as vigil writes them (Date.toISOString). */
const time = z.string().max(40).regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/, "must be an ISO-8601 UTC time");
const actorName = z.string().min(1).max(128).regex(/^[^\0-\x1f]*$/, "must not contain control characters");
const hostName = z.string().min(1).max(253).regex(/^[A-Za-z0-9._-]+$/, "must be a host name");
const text = (max: number) => z.string().max(max).regex(/^[^\0]*$/, "must not contain NUL");
const ownerRef = z.string().max(80).regex(/^(user|group):[A-Za-z0-9._@-]{1,64}$/, "must be user:NAME or group:NAME");
const ipv4 = z.string().regex(/^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/, "must be an IPv4 address");
const cidr = z.string().max(18).regex(/^[0-9.]{7,15}\/\d{1,2}$/, "must be an IPv4 CIDR");

const lineageSchema = z.strictObject({
  kind: z.enum(["image", "clone", "import"]),
  image: text(64).optional(),
  sourceVm: z.strictObject({ id: uuid, name: vmNameSchema }).optional(),
  snapshot: text(128).optional(),
  linked: z.boolean().optional(),
  bundle: z.strictObject({ file: text(4096), signer: text(128) }).optional(),
});

const boundedRecord = (key: z.ZodString, value: z.ZodString, max: number, what: string) =>
  z.record(key, value).refine((r) => Object.keys(r).length <= max, { message: `must have at most ${max} ${what}` });

const vmSchema = z.strictObject({
  id: uuid,
  name: vmNameSchema,
  spec: vmSpecSchema,
  vmgenid: uuid,
  generation: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  owner: ownerRef,
  approver: actorName.nullable(),
  purpose: text(500).nullable(),
  expiresAt: z.iso.date().or(z.iso.datetime()).nullable(),
  labels: boundedRecord(z.string().regex(/^[a-z][a-z0-9_.-]{0,62}$/), z.string().max(200), DOSSIER_LIMITS.labels, "labels"),
  lineage: lineageSchema,
  createdBy: actorName,
  createdAt: time,
  vtimeNs: uuid,
  securityFloor: boundedRecord(z.string().min(1).max(64), z.string().max(200), DOSSIER_LIMITS.floor, "entries"),
});

const generationSchema = z.strictObject({
  generation: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  parentGeneration: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).nullable(),
  vmgenid: uuid,
  reason: z.enum(["create", "revert", "restore", "clone", "import"]),
  snapshot: text(128).nullable(),
  sourceVmId: uuid.nullable(),
  reseed: z.enum(["seen", "not-seen", "unsupported"]).nullable(),
  createdBy: actorName,
  createdAt: time,
});

const watchSchema = z.strictObject({
  intervalMs: z.number().int().min(MIN_INTERVAL_MS).max(MAX_INTERVAL_MS),
  policy: z.enum(WATCH_POLICIES),
  guestViewEvery: z.number().int().min(1).max(3600),
  noNewModules: z.boolean(),
  startedBy: z.string().max(128),
  startedAt: z.string().max(64),
});

const rid = z.string().min(1).max(128).nullable();

/** A store namespace's content; request ids kept, so a guest's retry of a write the source applied is not applied twice. */
const vtimeSchema = z.strictObject({
  counters: z.array(z.strictObject({ name: z.string().min(1).max(128), value: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER), lastRid: rid, updatedAt: time })).max(DOSSIER_LIMITS.counters),
  records: z.array(z.strictObject({ stream: z.string().min(1).max(128), seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER), data: z.string().max(1024), rid, time })).max(DOSSIER_LIMITS.records),
});

export type StoreContent = z.output<typeof vtimeSchema>;

export const dossierSchema = z
  .strictObject({
    format: z.literal(DOSSIER_FORMAT),
    version: z.literal(DOSSIER_VERSION),
    source: z.strictObject({ host: hostName, exportedAt: time, state: z.enum(["running", "paused", "stopped", "crashed"]) }),
    vm: vmSchema,
    /** One per spec disk, in order: its virtual size, and the base image it is an overlay of (null: it stands alone or its chain is the source's own). */
    disks: z.array(z.strictObject({ name: z.string().max(16), virtualSize: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER), base: z.strictObject({ image: text(64), sha256 }).nullable() })).max(16),
    /** A kernel-booted VM's kernel and initrd: the target must have that image with these digests. */
    boot: z.strictObject({ image: text(64), kernelSha256: sha256, initrdSha256: sha256 }).nullable(),
    /** The address and network of each bridged NIC: the target keeps the address (the segment spans the hosts). */
    nics: z.array(z.strictObject({ nic: z.string().max(16), network: z.string().max(12), cidr, ip: ipv4.nullable(), mac: z.string().max(17) })).max(8),
    generations: z.array(generationSchema).max(DOSSIER_LIMITS.generations),
    firewall: z.strictObject({
      versions: z.array(z.strictObject({ version: z.number().int().min(1).max(1_000_000), policy: policySchema, actor: actorName, createdAt: time })).max(DOSSIER_LIMITS.policyVersions),
      quarantine: z.strictObject({ since: time, reason: text(1000), actor: actorName }).nullable(),
    }),
    vtime: vtimeSchema,
    watch: watchSchema.nullable(),
    /** Its posture (posture/posture-transfer.ts): the last scan, when it ran and was patched, its own gate policy. Absent from an older sender. */
    posture: postureTransferSchema.nullable().optional(),
    locations: z.array(z.strictObject({ host: hostName, path: text(4096), since: time, until: time.nullable() })).max(DOSSIER_LIMITS.locations),
  })
  .superRefine((d, ctx) => {
    const issue = (path: PropertyKey[], message: string) => ctx.addIssue({ code: "custom", path, message });
    if (d.vm.spec.name !== d.vm.name) issue(["vm", "spec", "name"], `must equal "vm.name" (${q(d.vm.name)})`);
    if (d.disks.length !== d.vm.spec.disks.length || d.disks.some((x, i) => x.name !== d.vm.spec.disks[i]!.name)) issue(["disks"], "must list the spec's disks, in order");
    if ((d.vm.spec.boot.kind === "kernel") !== (d.boot !== null)) issue(["boot"], "must be given exactly for a kernel-booted VM");
    const bridged = bridgedNics(d.vm.spec);
    if (d.nics.length !== bridged.length || d.nics.some((n, i) => n.nic !== bridged[i]!.name || n.network !== bridged[i]!.network || n.mac !== bridged[i]!.mac)) issue(["nics"], "must list the spec's bridged NICs, in order, with their networks and MACs");
    if (!d.generations.some((g) => g.generation === d.vm.generation && g.vmgenid === d.vm.vmgenid)) issue(["generations"], "must hold the VM's current generation and vmgenid");
    if (new Set(d.generations.map((g) => g.generation)).size !== d.generations.length) issue(["generations"], "must not repeat a generation");
    if (new Set(d.firewall.versions.map((v) => v.version)).size !== d.firewall.versions.length) issue(["firewall", "versions"], "must not repeat a version");
    if (new Set(d.vtime.counters.map((c) => c.name)).size !== d.vtime.counters.length) issue(["vtime", "counters"], "must not repeat a counter");
    if (new Set(d.vtime.records.map((r) => `${r.stream}\0${r.seq}`)).size !== d.vtime.records.length) issue(["vtime", "records"], "must not repeat a stream's sequence number");
    const bytes = d.vtime.records.reduce((n, r) => n + r.data.length, 0);
    if (bytes > DOSSIER_LIMITS.recordBytes) issue(["vtime", "records"], `must hold at most ${DOSSIER_LIMITS.recordBytes} bytes of data (got ${bytes})`);
    if (d.locations.filter((l) => l.until === null).length > 1) issue(["locations"], "must have at most one open entry");
  });

export type Dossier = z.output<typeof dossierSchema>;

/** The IDS side a dossier needs (introspection/service.ts): the watch it reads and the one it loads after import. */
export interface WatchRegistry {
  /** Reads the watch stored for this VM into the running service (after the import wrote it). */
  loadWatch(vmId: string): Promise<void>;
}

export interface DossierDeps {
  vms: VmService;
  db: Db;
  guard: Guard;
  audit: AuditLog;
  catalog: ImageCatalog;
  hostName: string;
  vmsDir: string;
  /** The data registry: the disks an incoming VM gets here are registered as its data. */
  registry: DataRegistry;
  log: Logger;
  watches?: WatchRegistry | undefined;
}

const conflict = (field: string, message: string) => new VigilError("VIGIL_CONFLICT", message, { field });

/** sha256 of a base file, remembered by path, size and mtime (a kernel is hashed once, not at every move). */
const digestCache = new Map<string, string>();
async function digestOf(path: string): Promise<string> {
  const { statSync } = await import("node:fs");
  const st = statSync(path);
  const key = `${path}\0${st.size}\0${st.mtimeMs}\0${st.ino}`;
  const cached = digestCache.get(key);
  if (cached) return cached;
  const d = await sha256File(path);
  if (digestCache.size > 256) digestCache.clear();
  digestCache.set(key, d);
  return d;
}

function real(p: string): string | undefined {
  try {
    return realpathSync(p);
  } catch {
    return undefined;
  }
}

/** The catalog image named `name`, or undefined when this host does not have it. */
function imageOf(catalog: ImageCatalog, name: string | null) {
  if (name === null) return undefined;
  try {
    return catalog.get(name);
  } catch (err) {
    if (err instanceof VigilError && err.code === "VIGIL_IMAGE_NOT_FOUND") return undefined;
    throw err;
  }
}

/**
 * The VM's dossier, under its lock, for `ctx` holding `vm.migrate`. Refused (nothing is read further) for a
 * template, a VM with snapshots or saved memory (internal snapshots live inside the qcow2 and a block mirror does
 * not carry them), a VM whose monotonic store is shared with another VM here, and a VM in a state that cannot move.
 */
export async function exportDossier(deps: DossierDeps, ctx: RequestContext, vmName: string): Promise<Dossier> {
  return deps.vms.operate(ctx, vmName, { action: "vm.dossier", permission: "vm.migrate" }, async (h) => {
    const vm = h.vm;
    assertAllowed("migrate", vm.name, vm.state, "move");
    const source = vm.state as "running" | "paused" | "stopped" | "crashed";
    if (vm.isTemplate) throw conflict("isTemplate", `Cannot move VM ${q(vm.name)}: it is a template (its linked clones depend on its disks here)`);
    const dependents = await deps.db.selectFrom("vms").select("name").where("base_vm_id", "=", vm.id).execute();
    if (dependents.length > 0) throw conflict("dependents", `Cannot move VM ${q(vm.name)}: linked clones depend on its disks here (${dependents.map((d) => d.name).join(", ")})`);
    const snaps = await deps.db.selectFrom("snapshots").select("name").where("vm_id", "=", vm.id).execute();
    if (snaps.length > 0 || vm.resumeSnapshotId !== null) {
      throw conflict("snapshots", `Cannot move VM ${q(vm.name)}: it has snapshots (${snaps.map((s) => s.name).join(", ") || "saved memory to resume"}); they live inside its qcow2 disks and a block mirror does not carry them: delete them first`);
    }
    const sharer = await deps.db.selectFrom("vms").select("name").where("vtime_ns", "=", vm.vtimeNs).where("id", "!=", vm.id).executeTakeFirst();
    if (sharer) throw conflict("vtimeNs", `Cannot move VM ${q(vm.name)}: its monotonic store is shared with VM ${q(sharer.name)} here (vtime link); a store moves with one VM only`);

    const l = deps.vms.layoutOf(vm); // a shared VM's disks are on the shared storage
    const image = imageOf(deps.catalog, vm.spec.image);
    const imageDisk = image?.disk !== undefined ? real(image.disk) : undefined;
    const disks: Dossier["disks"] = [];
    for (const d of vm.spec.disks) {
      const info = await imageInfo(diskFile(l.disksDir, d.name), { format: "qcow2" });
      if ((info.snapshots?.length ?? 0) > 0) throw conflict("snapshots", `Cannot move VM ${q(vm.name)}: its disk ${q(d.name)} holds internal snapshots (a block mirror does not carry them)`);
      const overImage = vm.baseVmId === null && d.backing !== undefined && imageDisk !== undefined && real(d.backing) === imageDisk;
      disks.push({ name: d.name, virtualSize: info["virtual-size"], base: overImage ? { image: vm.spec.image!, sha256: await digestOf(d.backing!) } : null });
    }
    const boot = vm.spec.boot.kind === "kernel" ? { image: vm.spec.image ?? "", kernelSha256: await digestOf(vm.spec.boot.kernel), initrdSha256: await digestOf(vm.spec.boot.initrd) } : null;
    if (boot && boot.image === "") throw conflict("image", `Cannot move VM ${q(vm.name)}: it boots a kernel that belongs to no image`);

    const addresses = await deps.db.selectFrom("nic_addresses").innerJoin("networks", "networks.id", "nic_addresses.network_id").select(["nic_addresses.nic", "nic_addresses.ip", "nic_addresses.mac", "networks.name", "networks.cidr"]).where("vm_id", "=", vm.id).execute();
    const nics: Dossier["nics"] = [];
    for (const n of bridgedNics(vm.spec)) {
      const a = addresses.find((x) => x.nic === n.name && x.name === n.network);
      const net = a ?? (await deps.db.selectFrom("networks").select(["name", "cidr"]).where("name", "=", n.network).executeTakeFirst());
      if (!net) throw conflict(`spec.nics`, `Cannot move VM ${q(vm.name)}: its NIC ${q(n.name)} is on network ${q(n.network)}, which does not exist here`);
      // A NIC never plugged in has no address yet: the target allocates one at its first start.
      nics.push({ nic: n.name, network: n.network, cidr: net.cidr, ip: a?.ip ?? null, mac: n.mac });
    }

    const generations = (await deps.db.selectFrom("generations").selectAll().where("vm_id", "=", vm.id).orderBy("id").execute()).map((g) => ({
      generation: g.generation, parentGeneration: g.parent_generation, vmgenid: g.vmgenid, reason: g.reason, snapshot: g.snapshot, sourceVmId: g.source_vm_id, reseed: g.reseed, createdBy: g.created_by, createdAt: g.created_at,
    }));
    const versions = (await deps.db.selectFrom("fw_policies").selectAll().where("vm_id", "=", vm.id).orderBy("version").execute()).map((p) => ({ version: p.version, policy: JSON.parse(p.policy) as unknown, actor: p.actor, createdAt: p.created_at }));
    const quarantine = await deps.db.selectFrom("quarantine").select(["since", "reason", "actor"]).where("vm_id", "=", vm.id).executeTakeFirst();
    const watchRow = await deps.db.selectFrom("kv").select("value").where("key", "=", `introspection.watch.${vm.id}`).executeTakeFirst();
    const locations = await deps.db.selectFrom("vm_locations").select(["host", "path", "since", "until"]).where("vm_id", "=", vm.id).orderBy("id").execute();

    const dossier = {
      format: DOSSIER_FORMAT,
      version: DOSSIER_VERSION,
      source: { host: deps.hostName, exportedAt: new Date().toISOString(), state: source },
      vm: {
        id: vm.id, name: vm.name, spec: vm.spec, vmgenid: vm.vmgenid, generation: vm.generation, owner: vm.owner, approver: vm.approver, purpose: vm.purpose, expiresAt: vm.expiresAt,
        labels: vm.labels, lineage: vm.lineage, createdBy: vm.createdBy, createdAt: vm.createdAt, vtimeNs: vm.vtimeNs, securityFloor: vm.securityFloor,
      },
      disks,
      boot,
      nics,
      generations,
      firewall: { versions, quarantine: quarantine ?? null },
      vtime: await readStore(deps.db, vm.vtimeNs),
      watch: watchRow ? (JSON.parse(watchRow.value) as unknown) : null,
      posture: await readPosture(deps.db, vm),
      locations,
    };
    // What leaves here passes the check the target applies: a VM this host cannot describe is refused here.
    return parseOrThrow(dossierSchema, dossier, "dossier", "VIGIL_HOST");
  }, (d) => ({ disks: d.disks.map((x) => ({ name: x.name, base: x.base?.image ?? null })), generations: d.generations.length, policyVersions: d.firewall.versions.length }));
}

/** How the target will get each disk (migration/disks.ts uses it): over its base image here ("top"), or all of it ("full"). */
export interface IncomingDiskPlan {
  name: string;
  virtualSize: number;
  /** This host's base image file when it has the same one (same name, same digest). */
  base: string | undefined;
}

/** What importing decided, for the disk step: the VM as stored and each disk's plan. */
export interface ImportedVm {
  vm: VmRecord;
  disks: IncomingDiskPlan[];
}

/**
 * Stores the dossier's VM here in state `incoming` with the same uuid, for `ctx` holding `vm.migrate`. Refused
 * (VIGIL_CONFLICT naming the field; nothing is written) when the uuid or name exists here, a bridged NIC's network
 * is missing or has another range, its address is taken, the kernel image is missing or differs, a disk's base
 * image here has the same name and another digest, or the monotonic store namespace exists here. The VM gets
 * this host's own jail uid; no NIC is plugged (the start does that).
 */
export async function importDossier(deps: DossierDeps, input: unknown, ctx: RequestContext): Promise<ImportedVm> {
  const d = parseOrThrow(dossierSchema, input, "dossier", "VIGIL_BAD_REQUEST");
  const target = { kind: "vm", id: d.vm.id, name: d.vm.name };
  return deps.guard.run(ctx, { action: "vm.incoming", permission: "vm.migrate", target, owner: d.vm.owner, details: { from: d.source.host } }, async () => {
    const { spec, disks } = await checkImport(deps, d);
    await writeImport(deps, d, spec);
    try {
      await jailUidOf(deps.db, d.vm.id);
      await deps.watches?.loadWatch(d.vm.id);
    } catch (err) {
      await deleteImport(deps.db, d);
      throw err;
    }
    return { vm: await deps.vms.recordById(d.vm.id), disks };
  }, (r) => ({ disks: r.disks.map((x) => ({ name: x.name, sync: x.base ? "top" : "full" })) }));
}

/** Every refusal, before anything is written; the spec as this host will run it (its own image paths). */
async function checkImport(deps: DossierDeps, d: Dossier): Promise<{ spec: VmSpec; disks: IncomingDiskPlan[] }> {
  const { db } = deps;
  const name = q(d.vm.name);
  if (await db.selectFrom("vms").select("id").where("id", "=", d.vm.id).executeTakeFirst()) throw conflict("vm.id", `Cannot receive VM ${name}: a VM with its uuid ${q(d.vm.id)} exists on this host`);
  if (await db.selectFrom("vms").select("id").where("name", "=", d.vm.name).executeTakeFirst()) throw conflict("vm.name", `Cannot receive VM ${name}: a VM with that name exists on this host`);
  const spec: VmSpec = structuredClone(d.vm.spec);
  const bridged = bridgedNics(spec);
  for (const [i, n] of d.nics.entries()) {
    const at = spec.nics.indexOf(bridged[i]!);
    const net = await db.selectFrom("networks").select(["id", "cidr"]).where("name", "=", n.network).executeTakeFirst();
    if (!net) throw conflict(`vm.spec.nics.${at}.network`, `Cannot receive VM ${name}: its NIC ${q(n.nic)} is on network ${q(n.network)}, which this host does not have`);
    if (net.cidr !== n.cidr) throw conflict(`vm.spec.nics.${at}.network`, `Cannot receive VM ${name}: network ${q(n.network)} is ${net.cidr} here and ${n.cidr} on the source (the VM keeps its address)`);
    if (n.ip === null) continue;
    const taken = await db.selectFrom("nic_addresses").select("vm_id").where("network_id", "=", net.id).where("ip", "=", n.ip).executeTakeFirst();
    if (taken) throw conflict(`nics.${i}.ip`, `Cannot receive VM ${name}: its address ${n.ip} on network ${q(n.network)} is taken here`);
  }
  if (d.boot) {
    const image = imageOf(deps.catalog, d.boot.image);
    if (!image || image.boot.kind !== "kernel") throw conflict("vm.spec.boot", `Cannot receive VM ${name}: it boots the kernel of image ${q(d.boot.image)}, which this host does not have`);
    const same = (await digestOf(image.boot.kernel)) === d.boot.kernelSha256 && (await digestOf(image.boot.initrd)) === d.boot.initrdSha256;
    if (!same) throw conflict("vm.spec.boot", `Cannot receive VM ${name}: image ${q(d.boot.image)} here has another kernel or initrd (different digest) than the one the VM boots`);
    if (spec.boot.kind === "kernel") spec.boot = { ...spec.boot, kernel: image.boot.kernel, initrd: image.boot.initrd };
  }
  const disks: IncomingDiskPlan[] = [];
  for (const [i, disk] of d.disks.entries()) {
    const s = spec.disks[i]!;
    let base: string | undefined;
    if (disk.base) {
      const image = imageOf(deps.catalog, disk.base.image);
      if (image?.disk !== undefined) {
        if ((await digestOf(image.disk)) !== disk.base.sha256) throw conflict(`vm.spec.disks.${i}.backing`, `Cannot receive VM ${name}: its disk ${q(disk.name)} is an overlay of image ${q(disk.base.image)}, and that image here has another digest`);
        base = image.disk;
      }
    }
    // Over the same base: an overlay of it. Otherwise the disk stands alone here (a full copy of its content).
    spec.disks[i] = base !== undefined ? { ...s, backing: base } : { name: s.name, sizeMiB: Math.max(1, Math.ceil(disk.virtualSize / 2 ** 20)) };
    disks.push({ name: disk.name, virtualSize: disk.virtualSize, base });
  }
  const ns = await db.selectFrom("vtime_counters").select("name").where("ns", "=", d.vm.vtimeNs).executeTakeFirst() ?? (await db.selectFrom("vtime_records").select("seq").where("ns", "=", d.vm.vtimeNs).executeTakeFirst()) ?? (await db.selectFrom("vms").select("id").where("vtime_ns", "=", d.vm.vtimeNs).executeTakeFirst());
  if (ns) throw conflict("vm.vtimeNs", `Cannot receive VM ${name}: its monotonic store namespace ${q(d.vm.vtimeNs)} exists on this host`);
  return { spec: vmSpecSchema.parse(spec), disks };
}

/** One transaction: the row (incoming) and everything that came with it. */
async function writeImport(deps: DossierDeps, d: Dossier, spec: VmSpec): Promise<void> {
  const v = d.vm;
  try {
    await deps.db.transaction().execute(async (tx) => {
      await new VmRepository(tx).insert({
        id: v.id, name: v.name, spec, state: "incoming", host: deps.hostName, vmgenid: v.vmgenid, generation: v.generation, owner: v.owner, approver: v.approver, purpose: v.purpose, expiresAt: v.expiresAt,
        labels: v.labels, lineage: v.lineage as Lineage, isTemplate: false, createdBy: v.createdBy, createdAt: v.createdAt, vtimeNs: v.vtimeNs, securityFloor: v.securityFloor,
      });
      for (const g of d.generations) {
        await tx.insertInto("generations").values({ vm_id: v.id, generation: g.generation, parent_generation: g.parentGeneration, vmgenid: g.vmgenid, reason: g.reason, snapshot: g.snapshot, source_vm_id: g.sourceVmId, reseed: g.reseed, created_by: g.createdBy, created_at: g.createdAt }).execute();
      }
      for (const p of d.firewall.versions) await tx.insertInto("fw_policies").values({ vm_id: v.id, version: p.version, policy: JSON.stringify(p.policy), actor: p.actor, created_at: p.createdAt }).execute();
      if (d.firewall.quarantine) await tx.insertInto("quarantine").values({ vm_id: v.id, ...d.firewall.quarantine }).execute();
      await writeStore(tx, v.vtimeNs, d.vtime);
      for (const l of d.locations) await tx.insertInto("vm_locations").values({ vm_id: v.id, host: l.host, path: l.path, since: l.since, until: l.until }).execute();
      for (const n of d.nics) {
        if (n.ip === null) continue;
        const net = await tx.selectFrom("networks").select("id").where("name", "=", n.network).executeTakeFirstOrThrow();
        await tx.insertInto("nic_addresses").values({ vm_id: v.id, nic: n.nic, network_id: net.id, ip: n.ip, mac: n.mac }).execute();
      }
      if (d.watch) await tx.insertInto("kv").values({ key: `introspection.watch.${v.id}`, value: JSON.stringify(d.watch) }).execute();
      if (d.posture) await writePosture(tx, v, d.posture, { withPolicy: true });
    });
  } catch (err) {
    // Another request took the name, uuid or address between the checks and the write: nothing was written.
    if (/UNIQUE constraint/i.test(String((err as Error).message))) throw conflict("vm", `Cannot receive VM ${q(v.name)}: its name, uuid or an address was taken on this host meanwhile`);
    throw err;
  }
}

/** Undoes `writeImport` (a later step of the import failed). The jail uid row stays: uids are never reused. */
async function deleteImport(db: Db, d: Dossier): Promise<void> {
  await db.transaction().execute(async (tx) => {
    await tx.deleteFrom("vms").where("id", "=", d.vm.id).execute(); // nic_addresses, fw_policies, quarantine cascade
    await tx.deleteFrom("generations").where("vm_id", "=", d.vm.id).execute();
    await tx.deleteFrom("vm_locations").where("vm_id", "=", d.vm.id).execute();
    await tx.deleteFrom("vtime_counters").where("ns", "=", d.vm.vtimeNs).execute();
    await tx.deleteFrom("vtime_records").where("ns", "=", d.vm.vtimeNs).execute();
    await tx.deleteFrom("kv").where("key", "=", `introspection.watch.${d.vm.id}`).execute();
    await removePosture(tx, d.vm);
  });
}

async function readStore(db: Db, ns: string): Promise<StoreContent> {
  const counters = (await db.selectFrom("vtime_counters").select(["name", "value", "last_rid", "updated_at"]).where("ns", "=", ns).orderBy("name").execute()).map((c) => ({ name: c.name, value: c.value, lastRid: c.last_rid, updatedAt: c.updated_at }));
  const records = await db.selectFrom("vtime_records").select(["stream", "seq", "data", "rid", "time"]).where("ns", "=", ns).orderBy("stream").orderBy("seq").execute();
  return { counters, records };
}

async function writeStore(tx: Db, ns: string, content: StoreContent): Promise<void> {
  for (const c of content.counters) await tx.insertInto("vtime_counters").values({ ns, name: c.name, value: c.value, last_rid: c.lastRid, updated_at: c.updatedAt }).execute();
  for (const r of content.records) await tx.insertInto("vtime_records").values({ ns, stream: r.stream, seq: r.seq, data: r.data, rid: r.rid, time: r.time }).execute();
}

/**
 * The store as it is now, for the switchover of a live migration: the guest kept writing on the source while its
 * RAM was copied, so the dossier's copy is stale. Read on the source once its guest is paused (pre-switchover),
 * applied on the target with `applyStore` before `commitIncoming`.
 */
export async function exportStore(deps: DossierDeps, vmId: string): Promise<StoreContent> {
  const vm = await deps.vms.recordById(vmId);
  return parseOrThrow(vtimeSchema, await readStore(deps.db, vm.vtimeNs), "store", "VIGIL_HOST");
}

/**
 * Replaces an incoming VM's store with the source's newer content, in one transaction. Forward only: a counter
 * that would go down, or a record that is missing or differs, is refused (VIGIL_CONFLICT) and nothing changes.
 */
export async function applyStore(deps: DossierDeps, vmId: string, input: unknown): Promise<void> {
  const content = parseOrThrow(vtimeSchema, input, "store", "VIGIL_BAD_REQUEST");
  const vm = await deps.vms.recordById(vmId);
  if (vm.state !== "incoming") throw new VigilError("VIGIL_INVALID_STATE", `Cannot update the store of VM ${q(vm.name)}: it is ${vm.state}, not incoming`);
  const bytes = content.records.reduce((n, r) => n + r.data.length, 0);
  if (bytes > DOSSIER_LIMITS.recordBytes) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid store: "records" must hold at most ${DOSSIER_LIMITS.recordBytes} bytes of data`, { field: "records" });
  await deps.db.transaction().execute(async (tx) => {
    const now = await readStore(tx, vm.vtimeNs);
    for (const c of now.counters) {
      const next = content.counters.find((x) => x.name === c.name);
      if (!next || next.value < c.value) throw conflict(`counters.${c.name}`, `Cannot update the store of VM ${q(vm.name)}: counter ${q(c.name)} would go back from ${c.value} to ${next?.value ?? "nothing"}`);
    }
    for (const r of now.records) {
      const same = content.records.find((x) => x.stream === r.stream && x.seq === r.seq);
      if (!same || same.data !== r.data) throw conflict(`records.${r.stream}`, `Cannot update the store of VM ${q(vm.name)}: record ${r.seq} of stream ${q(r.stream)} would change or go`);
    }
    await tx.deleteFrom("vtime_counters").where("ns", "=", vm.vtimeNs).execute();
    await tx.deleteFrom("vtime_records").where("ns", "=", vm.vtimeNs).execute();
    await writeStore(tx, vm.vtimeNs, content);
  });
}
