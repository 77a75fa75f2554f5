/**
 * Export and import: a VM as one signed, streamable file (format in format.ts, docs/bundles.md).
 *
 * Export stages a consistent copy of every disk's whole backing chain (the VM paused while its files are copied,
 * if it runs), drops internal snapshots unless asked to keep them, compresses each layer with zstd while hashing
 * it, signs the manifest with the site key, and streams the archive to the client — the daemon never writes a
 * bundle to a path a request names. Import reads the client's stream: the manifest and its signature first
 * (an unknown signer is refused before any disk byte is read), then each file, checked against the manifest's
 * size as its header arrives and against its hashes as it streams, into a private staging directory. Only when
 * everything verified is a VM created — with fresh identity, its kernel from this host's image of the same name,
 * never a path from the bundle. On any failure the staging directory goes and nothing else was touched.
 */
import { createReadStream, lstatSync, readdirSync, realpathSync, renameSync, rmSync, statSync, statfsSync, copyFileSync, chmodSync } from "node:fs";
import { createHash, randomUUID } from "node:crypto";
import { dirname, join, resolve } from "node:path";
import { z } from "zod";
import { VigilError, q } from "../../errors.ts";
import type { Guard, RequestContext } from "../../auth/guard.ts";
import { canonicalJson } from "../../audit/canonical-json.ts";
import type { SiteKey } from "../../audit/site-key.ts";
import type { ImageCatalog } from "../../image/catalog.ts";
import type { Logger } from "../../log.ts";
import { QEMU_IMG } from "../../qemu/qemu-img.ts";
import { runCommand } from "../../util/run-command.ts";
import type { ProgressBus } from "../../util/progress.ts";
import { withCleanup } from "../../util/cleanup-iterator.ts";
import type { DataRegistry } from "../../provenance/data-registry.ts";
import { ensurePrivateDir } from "../../host/private-dir.ts";
import type { VmService } from "../../vm/vm-service.ts";
import type { VmRecord } from "../../vm/vm-repository.ts";
import { MAX_CHAIN, recordedPlaces } from "../../vm/recorded-layers.ts";
import { diskFile, type VmView } from "../../vm/vm-view.ts";
import { vmNameSchema, type VmSpec } from "../../vm/spec.ts";
import { parseOrThrow } from "../../validation.ts";
import { cloneSpec } from "../clones.ts";
import { Qcow2Image, assertSelfContained, type Qcow2Header } from "../qcow2.ts";
import type { Snapshot, SnapshotRepository } from "../snapshot-repository.ts";
import type { SnapshotService } from "../snapshots.ts";
import type { TrustStore } from "../trust.ts";
import { BLOCK, END, fileHeader, padding, parseHeader } from "./tar.ts";
import type { ImportedBundles } from "./imported-bundles.ts";
import { BUNDLE_SIGNATURE_CONTEXT, MANIFEST_ENTRY, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, SIGNATURE_ENTRY, bundleSignedBytes, manifestSchema, signatureEntry, signatureSchema, type BundleFile, type Manifest } from "./format.ts";
import type { PolicyCarrier } from "../policy-carrier.ts";
import { StreamReader } from "./stream-reader.ts";
import { boundedDecompressor, compressFile } from "./zstd.ts";

export const exportRequestSchema = z.strictObject({
  withSnapshots: z.boolean().default(false),
  memory: z.boolean().default(false),
  /** The bundle is refused by every importer after this instant (ISO 8601, in the future). Default: no expiry. */
  expiresAt: z.iso.datetime({ offset: true }).optional(),
});

/**
 * The export request's headers: `x-vigil-output` is where the client says it writes the bundle — an absolute
 * path of at most 1024 characters, recorded as information only (never opened, never purged). Anything else is
 * refused naming the header, rather than silently dropped.
 */
export const exportHeadersSchema = z.object({
  "x-vigil-output": z
    .string()
    .regex(/^\/[^\0\n]{0,1023}$/, "must be an absolute path (starting with /) of at most 1024 characters")
    .optional(),
});

/** The most layers a disk's backing chain may have (export and import alike). */

/** What an import request says besides the bundle: the new VM's name and its ownership fields. */
export interface ImportOptions {
  name?: string | undefined;
  /** Where the client read the bundle from (recorded in the lineage). */
  source: string;
  /** Default: the purpose in the bundle. */
  purpose?: string | undefined;
  approver?: string | undefined;
  expiresAt?: string | undefined;
  /** Import a bundle this site imported before (a replay): refused unless set; audited either way. */
  allowReplay?: boolean | undefined;
}

export interface BundleDeps {
  vms: VmService;
  snapshots: SnapshotRepository;
  snapshotService: SnapshotService;
  trust: TrustStore;
  siteKey: SiteKey;
  catalog: ImageCatalog;
  registry: DataRegistry;
  guard: Guard;
  progress: ProgressBus;
  vmsDir: string;
  hostName: string;
  log: Logger;
  imported: ImportedBundles;
  /** The facts of `floor` that `state` is below (vtime's rollback policy), for an import's resume point. */
  floorViolations: (floor: Record<string, string>, state: Record<string, string>) => Array<{ fact: string; floor: string; snapshot: string | null }>;
  /** The firewall policy travels in the manifest (storage/policy-carrier.ts); without it, none does. */
  policies?: PolicyCarrier | undefined;
}

/** A prepared export: stream it with `chunks()`, then it cleans up after itself. */
export interface PreparedExport {
  manifest: Manifest;
  totalBytes: number;
  chunks(): AsyncGenerator<Buffer>;
}

export class BundleService {
  /** Manifest digests being imported right now: two concurrent imports of one bundle are one replay. */
  private readonly importing = new Set<string>();

  constructor(private readonly d: BundleDeps) {}

  /**
   * A disk's backing chain, bottom first, built from what vigil recorded — never from where a header says to go.
   * The headers are written by QEMU (which a guest may have compromised), so each layer's backing file must be
   * one vigil put there: a file in this VM's disk directory, a disk or snapshot base of a VM it was cloned from
   * (`baseVmId`, transitively), or a backing file vigil recorded in one of their specs (the image). A `json:`
   * name, an external data file, a backing format other than qcow2, a symlink, a loop or a longer chain is refused.
   */
  private async recordedChain(vm: VmRecord, disksDir: string, disk: string): Promise<string[]> {
    const real = (p: string): string | undefined => {
      try {
        return realpathSync(p);
      } catch {
        return undefined;
      }
    };
    const places = await recordedPlaces(vm, this.d.vmsDir, (id) => this.d.vms.recordById(id));
    const refuse = (why: string) => new VigilError("VIGIL_POLICY_DENIED", `Cannot export VM ${q(vm.name)}: disk ${q(disk)} ${why}; vigil did not put it there, so the disk's header was changed (by its QEMU?) and the bundle is not made`, { field: "disk" });
    const chain: string[] = [];
    let file = diskFile(disksDir, disk);
    for (;;) {
      if (chain.length >= MAX_CHAIN) throw refuse(`has a backing chain of more than ${MAX_CHAIN} files`);
      const st = lstatSync(file, { throwIfNoEntry: false });
      if (!st?.isFile()) throw refuse(`layer ${chain.length} ${q(file)} is not a regular file`);
      let header: Qcow2Header;
      const img = Qcow2Image.open(file);
      try {
        header = img.header;
      } finally {
        img.close();
      }
      chain.push(file);
      if (header.externalDataFile !== undefined) throw refuse(`layer ${q(file)} keeps its data in an external file${header.externalDataFile ? ` ${q(header.externalDataFile)}` : ""}`);
      const backing = header.backingFile;
      if (backing === undefined) break;
      if (backing.startsWith("json:")) throw refuse(`layer ${q(file)} names a json: block graph as its backing file`);
      if (header.backingFormat !== "qcow2") throw refuse(`layer ${q(file)} has backing format ${header.backingFormat === undefined ? "(not recorded)" : q(header.backingFormat)}, not qcow2`);
      const next = real(resolve(dirname(file), backing));
      if (next === undefined || !places.has(next)) throw refuse(`layer ${q(file)} names backing file ${q(backing)}, which is not one of this VM's recorded disks, its templates' or its image`);
      if (chain.includes(next)) throw refuse(`has a backing loop at ${q(next)}`);
      file = next;
    }
    return chain.reverse();
  }

  /** Builds the bundle's parts in a private staging directory; the archive is produced while it is streamed. */
  async prepareExport(ctx: RequestContext, vmName: string, input: unknown, clientPath: string | undefined): Promise<PreparedExport> {
    const req = parseOrThrow(exportRequestSchema, input ?? {}, "export request");
    if (req.expiresAt !== undefined && Date.parse(req.expiresAt) <= Date.now()) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Cannot export VM ${q(vmName)}: "expiresAt" must be in the future, got ${q(req.expiresAt)}`, { field: "expiresAt" });
    }
    const staging = join(this.d.vmsDir, `export-${randomUUID()}`);
    const prepared = await this.d.vms.operate(
      ctx,
      vmName,
      { action: "vm.export", permission: "vm.export", details: { withSnapshots: req.withSnapshots, memory: req.memory, clientPath } },
      async (h) => {
        const vm = h.vm;
        const live = vm.state === "running" || vm.state === "paused";
        if (req.memory && !live) throw new VigilError("VIGIL_INVALID_STATE", `Cannot export VM ${q(vm.name)} with memory: it is ${vm.state} (start it, or export without --memory)`, { field: "memory" });
        if (!req.memory && !(vm.state === "stopped" || vm.state === "crashed")) {
          throw new VigilError("VIGIL_INVALID_STATE", `Cannot export VM ${q(vm.name)}: it is ${vm.state} (stop it, or export --memory to capture it running)`);
        }
        // The chains first: a disk whose header names a file vigil did not put there refuses the export before
        // anything is made (not even the memory snapshot).
        const chains = new Map<string, string[]>();
        for (const disk of vm.spec.disks) chains.set(disk.name, await this.recordedChain(vm, h.layout.disksDir, disk.name));
        ensurePrivateDir(staging);
        let resume: Snapshot | undefined;
        if (req.memory) {
          // Single use: its one resume travels in the bundle (the import's first start); on this VM it counts as
          // resumed once the bundle is made (below), so the same RAM is never resumed both here and there.
          resume = await this.d.snapshotService.createLocked(ctx, h, { name: `export-${new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "")}`, description: "taken for export --memory", memory: true, singleUse: true });
        }
        const keep = (s: Snapshot) => req.withSnapshots || s.id === resume?.id;
        const all = await this.d.snapshots.list(vm.id);
        const keepByName = (name: string) => {
          const s = all.find((x) => x.name === name);
          return s !== undefined && keep(s);
        };
        // Every layer of every disk's backing chain, bottom first. A stopped VM's files are read where they are;
        // a running VM's are copied while it is paused (its files change as it runs), and so is any layer that
        // holds internal snapshots the bundle must not carry (they are dropped from the copy, not from the VM).
        // The manifest lists only this VM's own snapshots, and those live in the top layer (snapshots are taken
        // on the top node); a lower layer is another VM's disk — a template's, with the template's snapshots and
        // their RAM — so every internal snapshot of a lower layer is dropped, whatever `withSnapshots` says.
        const layers: Array<{ disk: string; layer: number; top: boolean; source: string; staged: boolean }> = [];
        const unwanted = (file: string, top: boolean): string[] => {
          const img = Qcow2Image.open(file);
          try {
            return img.snapshots().map((x) => x.name).filter((name) => !top || !keepByName(name));
          } finally {
            img.close();
          }
        };
        for (const disk of vm.spec.disks) {
          const chain = chains.get(disk.name)!;
          chain.forEach((file, layer) => {
            const isTop = layer === chain.length - 1;
            layers.push({ disk: disk.name, layer, top: isTop, source: file, staged: live || unwanted(file, isTop).length > 0 });
          });
        }
        const rt = live ? h.runtime() : undefined;
        const wasRunning = (await h.reload()).state === "running";
        if (rt && wasRunning) await rt.qmp.execute("stop");
        try {
          for (const l of layers.filter((x) => x.staged)) {
            const staged = join(staging, `${l.disk}-${l.layer}.qcow2`);
            copyFileSync(l.source, staged);
            chmodSync(staged, 0o600);
            l.source = staged;
          }
        } finally {
          if (rt && wasRunning) await rt.qmp.execute("cont");
        }
        for (const l of layers.filter((x) => x.staged)) {
          // Names are read again from the copy: a running VM's top layer may have changed since the first look.
          for (const name of unwanted(l.source, l.top)) {
            await runCommand(QEMU_IMG, ["snapshot", "-d", name, l.source], { what: "Dropping a snapshot from the export copy" });
          }
          const left = unwanted(l.source, l.top);
          if (left.length > 0) throw new VigilError("VIGIL_HOST", `Cannot export VM ${q(vm.name)}: snapshot ${q(left[0])} could not be dropped from layer ${l.layer} of disk ${q(l.disk)}`);
        }
        // Compressed while the VM's lock is held: a stopped VM's files are read in place and must not change.
        const files: BundleFile[] = [];
        const rawTotal = layers.reduce((n, l) => n + statSync(l.source).size, 0);
        let rawDone = 0;
        for (const l of layers) {
          const name = `${l.disk}-${l.layer}.qcow2.zst`;
          const r = await compressFile(l.source, join(staging, name));
          rawDone += r.rawSize;
          this.d.progress.emit({ requestId: ctx.requestId, what: "compress", current: rawDone, total: rawTotal });
          if (l.staged) rmSync(l.source);
          files.push({ name, disk: l.disk, layer: l.layer, compression: "zstd", ...r });
        }
        const kept = all.filter(keep);
        if (resume) await this.d.snapshots.markResumed(resume.id);
        return { vm, files, kept, resume };
      },
    ).catch((err: unknown) => {
      rmSync(staging, { recursive: true, force: true });
      throw err;
    });

    try {
      const { vm, files } = prepared;
      const byId = new Map(prepared.kept.map((s) => [s.id, s.name]));
      const manifest: Manifest = {
        format: "vigil-bundle",
        version: 1,
        createdAt: new Date().toISOString(),
        site: { keyId: this.d.siteKey.keyId, host: this.d.hostName },
        exportedBy: ctx.actor.name,
        ...(req.expiresAt !== undefined ? { expiresAt: req.expiresAt } : {}),
        vm: { id: vm.id, name: vm.name, spec: vm.spec, owner: vm.owner, purpose: vm.purpose, labels: vm.labels, generation: vm.generation, lineage: { ...vm.lineage }, securityFloor: vm.securityFloor, ...(this.d.policies ? { firewall: await this.d.policies.exportPolicy(vm.id) } : {}) },
        snapshots: prepared.kept.map((s) => ({
          name: s.name,
          parent: s.parentId ? (byId.get(s.parentId) ?? null) : null,
          kind: s.kind,
          description: s.description,
          createdBy: s.createdBy,
          createdAt: s.createdAt,
          generation: s.generation,
          vmStateSize: s.vmStateSize,
          stateSha256: s.stateSha256,
          floor: s.floor,
          singleUse: s.singleUse,
          // A single-use state resumes once in its whole lineage: its copy arrives used up, unless it is the
          // resume point made for this bundle, whose one resume is the import's (the source's counts as used).
          resumedCount: s.id === prepared.resume?.id ? 0 : s.singleUse && s.kind === "memory" ? Math.max(1, s.resumedCount) : s.resumedCount,
        })),
        resume: prepared.resume?.name ?? null,
        files,
      };
      const manifestBytes = Buffer.from(canonicalJson(manifest));
      const sigBytes = signatureEntry(this.d.siteKey.keyId, this.d.siteKey.sign(bundleSignedBytes(manifestBytes)));
      const totalBytes = 2 * BLOCK + manifestBytes.length + padding(BigInt(manifestBytes.length)).length + sigBytes.length + padding(BigInt(sigBytes.length)).length + files.reduce((n, f) => n + BLOCK + f.size + padding(BigInt(f.size)).length, 0) + END.length;
      const registry = this.d.registry;
      const progress = this.d.progress;
      const requestId = ctx.requestId;
      async function* chunks(): AsyncGenerator<Buffer> {
        let sent = 0;
        try {
          for (const [name, bytes] of [[MANIFEST_ENTRY, manifestBytes], [SIGNATURE_ENTRY, sigBytes]] as const) {
            yield fileHeader(name, BigInt(bytes.length));
            yield bytes;
            yield padding(BigInt(bytes.length));
          }
          for (const f of files) {
            yield fileHeader(`files/${f.name}`, BigInt(f.size));
            for await (const chunk of createReadStream(join(staging, f.name), { highWaterMark: 1024 * 1024 })) {
              sent += (chunk as Buffer).length;
              progress.emit({ requestId, what: "send", current: sent, total: totalBytes });
              yield chunk as Buffer;
            }
            yield padding(BigInt(f.size));
          }
          yield END;
          // The bundle now exists outside vigil's directories: where the client says it put it is information
          // only (never purged, never closing another registration): vigil did not make that file.
          await registry.reportLocation(vm.id, clientPath, "bundle", ctx.actor.name);
        } finally {
          rmSync(staging, { recursive: true, force: true });
        }
      }
      // Staging goes also when the client hangs up before the first chunk (the generator then never starts).
      return { manifest, totalBytes, chunks: () => withCleanup(chunks(), () => rmSync(staging, { recursive: true, force: true })) };
    } catch (err) {
      rmSync(staging, { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * Imports a bundle from a byte stream. Nothing is created unless the signature, every size and every hash
   * verified; the staging directory is removed whatever happens.
   */
  async import(ctx: RequestContext, body: AsyncIterable<Uint8Array>, options: ImportOptions): Promise<VmView> {
    return this.d.guard.run(
      ctx,
      { action: "vm.import", permission: "vm.create", target: { kind: "vm", name: options.name ?? null }, details: { source: options.source, allowReplay: options.allowReplay ?? false }, targetIdOf: (v: VmView) => v.id },
      async () => {
        if (options.name !== undefined) parseOrThrow(vmNameSchema, options.name, "import name");
        ensurePrivateDir(this.d.vmsDir);
        const staging = join(this.d.vmsDir, `import-${randomUUID()}`);
        ensurePrivateDir(staging);
        const claim: { digest?: string } = {};
        try {
          const received = await this.receive(ctx, StreamReader.from(body), staging, options, claim);
          return await this.create(ctx, received, staging, options);
        } finally {
          if (claim.digest !== undefined) this.importing.delete(claim.digest);
          rmSync(staging, { recursive: true, force: true });
        }
      },
      (v) => ({ id: v.id, name: v.name, vmgenid: v.vmgenid, lineage: v.lineage }),
    );
  }

  /** Reads and verifies the whole archive into `staging`. */
  private async receive(ctx: RequestContext, r: StreamReader, staging: string, options: ImportOptions, claim: { digest?: string }): Promise<Received> {
    const smallEntry = async (expected: string, max: number): Promise<Buffer> => {
      const at = r.offset;
      const h = parseHeader(await r.readExactly(BLOCK, `the header of ${expected}`), at);
      if (!h || h.name !== expected) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: expected entry ${q(expected)} at byte ${at}, found ${h ? q(h.name) : "the end of the archive"}`);
      if (h.size > BigInt(max)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${expected} is ${h.size} bytes (at most ${max})`);
      const data = await r.readExactly(Number(h.size), expected);
      await r.readExactly(padding(h.size).length, `the padding of ${expected}`);
      return data;
    };
    const manifestBytes = await smallEntry(MANIFEST_ENTRY, MAX_MANIFEST_BYTES);
    const sigRaw = await smallEntry(SIGNATURE_ENTRY, MAX_SIGNATURE_BYTES);
    let sigJson: unknown;
    try {
      sigJson = JSON.parse(sigRaw.toString("utf8"));
    } catch {
      throw new VigilError("VIGIL_BAD_REQUEST", "Invalid bundle: the signature entry is not JSON");
    }
    if (typeof sigJson === "object" && sigJson !== null && !("version" in sigJson)) {
      // Version 1 signed the bare manifest bytes, which a signature of another protocol could also cover.
      throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: its signature is version 1 (no "${BUNDLE_SIGNATURE_CONTEXT}" context), made by an older vigil, and is refused: export the VM again with this version`, { field: "version" });
    }
    const sig = parseOrThrow(signatureSchema, sigJson, "bundle signature");
    // The signature is checked before the manifest is even parsed: an unknown signer gets nothing read.
    const signer = await this.d.trust.verify(bundleSignedBytes(manifestBytes), sig.keyId, sig.signature);
    let manifestJson: unknown;
    try {
      manifestJson = JSON.parse(manifestBytes.toString("utf8"));
    } catch {
      throw new VigilError("VIGIL_BAD_REQUEST", "Invalid bundle: the manifest is not JSON");
    }
    const manifest = parseOrThrow(manifestSchema, manifestJson, "bundle manifest");
    // The site the manifest names is the one that signed it: a key trusted for its own bundles does not vouch
    // for a manifest that claims to come from another site.
    if (manifest.site.keyId !== sig.keyId) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: the manifest says it comes from the site with key ${q(manifest.site.keyId)}, but key ${q(sig.keyId)} signed it`, { field: "site.keyId" });
    }
    if (manifest.expiresAt !== undefined && Date.parse(manifest.expiresAt) <= Date.now()) {
      throw new VigilError("VIGIL_POLICY_DENIED", `Cannot import: the bundle expired at ${manifest.expiresAt}`, { field: "expiresAt" });
    }
    checkManifestShape(manifest);
    // Replays: the bundle is its signed manifest (which binds every byte through the hashes it lists).
    const digest = createHash("sha256").update(manifestBytes).digest("hex");
    if (this.importing.has(digest)) throw new VigilError("VIGIL_CONFLICT", `Cannot import: the same bundle (manifest sha256 ${digest.slice(0, 16)}…) is being imported right now`);
    this.importing.add(digest);
    claim.digest = digest;
    const prior = await this.d.imported.of(digest);
    if (prior.length > 0) {
      const first = prior[0]!;
      if (!options.allowReplay) {
        throw new VigilError("VIGIL_CONFLICT", `Cannot import: this bundle was imported already (by ${first.importedBy} at ${first.importedAt}${prior.length > 1 ? `, ${prior.length} times in all` : ""}); importing it again brings back the same state — pass allowReplay (vigil vm import --allow-replay) if that is intended`, { field: "allowReplay" });
      }
      const resume = manifest.snapshots.find((x) => x.name === manifest.resume);
      if (resume?.singleUse) {
        throw new VigilError("VIGIL_POLICY_DENIED", `Cannot import again: the bundle resumes single-use snapshot ${q(resume.name)}, which its first import resumes (a saved state is resumed once in its whole lineage)`, { field: "resume" });
      }
    }
    const need = manifest.files.reduce((n, f) => n + f.size + f.rawSize, 0);
    const free = Number(statfsSync(staging).bavail) * Number(statfsSync(staging).bsize);
    if (need > free) throw new VigilError("VIGIL_HOST", `Cannot import: the bundle needs ${need} bytes of staging space, ${free} are free`);

    const rawTotal = manifest.files.reduce((n, f) => n + f.size, 0);
    let done = 0;
    for (const f of manifest.files) {
      const at = r.offset;
      const h = parseHeader(await r.readExactly(BLOCK, `the header of files/${f.name}`), at);
      if (!h || h.name !== `files/${f.name}`) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: expected entry ${q(`files/${f.name}`)} at byte ${at}, found ${h ? q(h.name) : "the end of the archive"}`);
      if (h.size !== BigInt(f.size)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: entry ${q(h.name)} is ${h.size} bytes long but the manifest declares ${f.size}`);
      const label = `files/${f.name}`;
      const hash = createHash("sha256");
      const out = boundedDecompressor(join(staging, f.name.replace(/\.zst$/, "")), f, label);
      try {
        await r.pipeExactly(f.size, label, async (chunk) => {
          hash.update(chunk);
          done += chunk.length;
          this.d.progress.emit({ requestId: ctx.requestId, what: "receive", current: done, total: rawTotal });
          await out.write(chunk);
        });
      } catch (err) {
        out.abort();
        throw err;
      }
      if (hash.digest("hex") !== f.sha256) {
        out.abort();
        throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${label} does not match its sha256 (the file was changed)`);
      }
      await out.finish();
      const pad = await r.readExactly(padding(h.size).length, `the padding of ${label}`);
      if (pad.some((b) => b !== 0)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: non-zero padding after ${label}`);
    }
    // Then exactly the end-of-archive marker, and nothing after it: bytes nobody signed have no place here.
    const at = r.offset;
    const end = await r.readExactly(END.length, "the end-of-archive marker");
    if (end.some((b) => b !== 0)) {
      const next = parseHeader(end.subarray(0, BLOCK), at);
      if (next) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: unexpected entry ${q(next.name)} at byte ${at} (not in the manifest)`);
      throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: the end-of-archive marker at byte ${at} is not two zero blocks`);
    }
    if (!(await r.atEnd())) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: data after the end-of-archive marker (at byte ${r.offset})`);
    return { manifest, signer, digest, priorImports: prior.length };
  }

  /** Creates the VM from verified, staged layers. */
  private async create(ctx: RequestContext, received: Received, staging: string, options: ImportOptions): Promise<VmView> {
    const { manifest, signer } = received;
    const name = options.name ?? manifest.vm.name;
    parseOrThrow(vmNameSchema, name, "VM name");
    const src = manifest.vm.spec;
    // Only the image name travels: a kernel-booted VM boots this host's kernel of that image, never a path
    // that came in the bundle.
    let base: VmSpec = src;
    if (src.boot.kind === "kernel") {
      const image = this.d.catalog.get(src.image ?? "");
      if (image.boot.kind !== "kernel") throw new VigilError("VIGIL_BAD_REQUEST", `Cannot import: image ${q(src.image)} here does not boot a kernel`);
      const imageWords = new Set(image.boot.cmdline.split(" "));
      const extra = src.boot.cmdline.split(" ").filter((w) => w !== "" && !imageWords.has(w));
      base = { ...src, boot: { kind: "kernel", kernel: image.boot.kernel, initrd: image.boot.initrd, cmdline: [image.boot.cmdline, ...extra].join(" ") } };
    }
    const topOf = (disk: string) => Math.max(...manifest.files.filter((f) => f.disk === disk).map((f) => f.layer));
    // Validate every staged layer before it becomes a disk: no external data files, sane headers, and no
    // internal snapshot the manifest does not list. Snapshots (and the RAM a memory snapshot holds) may only
    // travel in a top layer and only when listed; anything else is data nobody declared — another VM's RAM
    // in a template's layer, or something smuggled — and the bundle is refused rather than quietly cleaned.
    const listed = new Set(manifest.snapshots.map((s) => s.name));
    for (const f of manifest.files) {
      const img = Qcow2Image.open(join(staging, f.name.replace(/\.zst$/, "")));
      try {
        // The bottom layer stands alone; every other layer names a qcow2 backing file (re-pointed below, so any
        // plain name will do — but never a json: block graph) and no layer keeps data in an external file.
        try {
          assertSelfContained(img.header, f.name, f.layer === 0 ? {} : { backing: { format: "qcow2" } });
        } catch (err) {
          if (err instanceof VigilError) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${err.message}`, { field: "files" });
          throw err;
        }
        const isTop = f.layer === topOf(f.disk);
        const stray = img.snapshots().find((s) => !isTop || !listed.has(s.name));
        if (stray) {
          throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: ${f.name} holds internal snapshot ${q(stray.name)} that the manifest does not list${isTop ? "" : " (a lower layer carries no snapshots)"}`);
        }
      } finally {
        img.close();
      }
    }
    // Importing a resume point below the VM's own floor is a revert below it, with no one to force it: refused.
    const resumeSnap = manifest.snapshots.find((x) => x.name === manifest.resume);
    const floor = manifest.vm.securityFloor ?? {};
    const below = resumeSnap ? this.d.floorViolations(floor, resumeSnap.floor) : [];
    if (below.length > 0) {
      throw new VigilError("VIGIL_POLICY_DENIED", `Cannot import: the bundle resumes snapshot ${q(resumeSnap!.name)}, which is below the VM's security floor (${below.map((v) => `${v.fact} ${v.snapshot ?? "(unset)"} < ${v.floor}`).join(", ")})`, { field: "resume" });
    }
    const spec = cloneSpec(base, name, () => undefined);
    // A bad policy in a bundle refuses the import before anything exists.
    if (manifest.vm.firewall !== undefined) this.d.policies?.checkPolicy(manifest.vm.firewall);
    const created = await this.d.vms.createDerived(ctx, {
      spec,
      owner: `user:${ctx.actor.name}`,
      lineage: { kind: "import", sourceVm: { id: manifest.vm.id, name: manifest.vm.name }, bundle: { file: options.source, signer: `${signer.name} (${signer.keyId})` } },
      // The bundle carries the purpose; an approval and an expiry are this site's to give, so only the request
      // sets them (the site policy `requireOwnership` then insists on all three).
      purpose: options.purpose ?? manifest.vm.purpose,
      approver: options.approver,
      expiresAt: options.expiresAt,
      labels: manifest.vm.labels,
      securityFloor: floor,
      reason: "import",
      prepareDisks: async (l) => {
        for (const disk of spec.disks) {
          const top = topOf(disk.name);
          if (!Number.isFinite(top)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: no layers for disk ${q(disk.name)}`);
          let lower: string | undefined;
          for (let layer = 0; layer <= top; layer++) {
            const staged = join(staging, `${disk.name}-${layer}.qcow2`);
            const dest = layer === top ? diskFile(l.disksDir, disk.name) : join(l.disksDir, `${disk.name}.layer${layer}.qcow2`);
            renameSync(staged, dest);
            // Backing files are re-pointed at the imported layers; whatever path the bundle's header named is gone.
            if (lower) await runCommand(QEMU_IMG, ["rebase", "-u", "-f", "qcow2", "-b", lower, "-F", "qcow2", dest], { what: "Linking imported disk layers" });
            if (layer < top) chmodSync(dest, 0o400);
            lower = dest;
          }
        }
      },
    });
    const l = { disksDir: join(this.d.vmsDir, created.id, "disks") };
    for (const f of readdirSync(l.disksDir).filter((x) => x.includes(".layer"))) await this.d.registry.register(created.id, join(l.disksDir, f), "disk");
    // The snapshot tree comes along with the top layers that hold it, parents first whatever the listed order
    // (checkManifestShape proved every parent is listed and there is no cycle). Each earlier import of this same
    // bundle is another copy of its saved states: it counts as a resume of each memory snapshot.
    const ids = new Map<string, string>();
    const pending = [...manifest.snapshots];
    while (pending.length > 0) {
      const i = pending.findIndex((x) => x.parent === null || ids.has(x.parent));
      const s = pending.splice(i, 1)[0]!;
      const row = await this.d.snapshots.insert({
        vmId: created.id,
        name: s.name,
        parentId: s.parent ? ids.get(s.parent)! : null,
        description: s.description,
        kind: s.kind,
        spec,
        generation: 1,
        vmgenid: created.vmgenid,
        vmStateSize: s.vmStateSize,
        stateSha256: s.stateSha256,
        diskBytes: 0,
        floor: s.floor,
        guestFacts: {},
        singleUse: s.singleUse,
        resumedCount: (s.resumedCount ?? 0) + (s.kind === "memory" ? received.priorImports : 0),
        createdBy: s.createdBy,
      });
      ids.set(s.name, row.id);
    }
    if (manifest.vm.firewall !== undefined) await this.d.policies?.adopt(ctx, created, manifest.vm.firewall, `bundle of VM ${manifest.vm.name} (${manifest.vm.id})`);
    await this.d.imported.record({ manifestSha256: received.digest, signerKeyId: signer.keyId, sourceVmId: manifest.vm.id, vmId: created.id, importedBy: ctx.actor.name, replay: received.priorImports > 0 });
    if (manifest.resume) {
      const id = ids.get(manifest.resume)!;
      return this.d.vms.describeVm(await this.d.vms.updateRecord(created.id, { resumeSnapshotId: id, currentSnapshotId: id }));
    }
    return this.d.vms.describeVm(created);
  }
}

interface Received {
  manifest: Manifest;
  signer: { keyId: string; name: string };
  /** sha256 of the signed manifest bytes: the bundle's identity. */
  digest: string;
  /** How often this site imported the same bundle before. */
  priorImports: number;
}

/** Structural checks the schema cannot express: unique names, contiguous layers, one chain per disk. */
function checkManifestShape(m: Manifest): void {
  const names = new Set<string>();
  for (const f of m.files) {
    if (names.has(f.name)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle manifest: file ${q(f.name)} is listed twice`);
    names.add(f.name);
    if (f.name !== `${f.disk}-${f.layer}.qcow2.zst`) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle manifest: file ${q(f.name)} should be named ${q(`${f.disk}-${f.layer}.qcow2.zst`)}`);
  }
  for (const disk of m.vm.spec.disks) {
    const layers = m.files.filter((f) => f.disk === disk.name).map((f) => f.layer).sort((a, b) => a - b);
    if (layers.length === 0 || layers.some((l, i) => l !== i)) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle manifest: disk ${q(disk.name)} needs layers 0..n, has ${JSON.stringify(layers)}`);
  }
  if (m.files.some((f) => !m.vm.spec.disks.some((d) => d.name === f.disk))) throw new VigilError("VIGIL_BAD_REQUEST", "Invalid bundle manifest: a file belongs to no disk of the VM");
  const byName = new Map(m.snapshots.map((s) => [s.name, s]));
  if (byName.size !== m.snapshots.length) throw new VigilError("VIGIL_BAD_REQUEST", "Invalid bundle manifest: a snapshot name is listed twice");
  // The tree: every parent is a listed snapshot, and following parents ends (no cycle), in at most n steps.
  m.snapshots.forEach((s, i) => {
    if (s.parent !== null && !byName.has(s.parent)) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle manifest: snapshot ${q(s.name)} names parent ${q(s.parent)}, which the bundle does not list`, { field: `snapshots.${i}.parent` });
    }
    let cur = s;
    for (let steps = 0; cur.parent !== null; steps++) {
      if (steps >= m.snapshots.length) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle manifest: the parents of snapshot ${q(s.name)} form a cycle`, { field: `snapshots.${i}.parent` });
      cur = byName.get(cur.parent)!;
    }
  });
  if (m.resume !== null) {
    const r = byName.get(m.resume);
    if (!r) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle manifest: it resumes from snapshot ${q(m.resume)}, which it does not list`, { field: "resume" });
    if (r.kind !== "memory") throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle manifest: it resumes from snapshot ${q(m.resume)}, which is a disk snapshot (no saved memory)`, { field: "resume" });
    if (r.singleUse && (r.resumedCount ?? 0) > 0) {
      throw new VigilError("VIGIL_POLICY_DENIED", `Cannot import: the bundle resumes single-use snapshot ${q(m.resume)}, which was resumed already`, { field: "resume" });
    }
  }
}
