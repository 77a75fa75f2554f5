/**
 * Importing existing disks as images (`vigil image import DISK.qcow2|.raw`). The disk arrives as a request body
 * and is hostile: it is written to a private staging file with a size cap, a qcow2 is read with vigil's own
 * bounded reader first and refused if it names a backing file or an external data file (either would make QEMU
 * read host files), and it is then converted into a fresh, standalone qcow2 that VMs use as a read-only base.
 */
import { createHash, randomUUID } from "node:crypto";
import { chmodSync, createWriteStream, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import type { Guard, RequestContext } from "../auth/guard.ts";
import type { Db } from "../inventory/db.ts";
import type { ImageRow } from "../inventory/schema.ts";
import { VigilError, q } from "../errors.ts";
import { ensurePrivateDir } from "../host/private-dir.ts";
import { eraseTree } from "../host/erase.ts";
import { imageInfo, QEMU_IMG } from "../qemu/qemu-img.ts";
import { runCommand } from "../util/run-command.ts";
import { parseOrThrow } from "../validation.ts";
import { Qcow2Image, assertSelfContained } from "../storage/qcow2.ts";
import { BUILTIN_IMAGES, type ImageCatalog, type ImageView } from "./catalog.ts";

export const importImageSchema = z.strictObject({
  name: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/, "must be 1-63 lower-case letters, digits and '-', starting with a letter"),
  format: z.enum(["qcow2", "raw"]),
  description: z.string().max(500).default(""),
  source: z.string().max(1024).default("(uploaded)"),
});

/** Largest disk file accepted: far above any test image, far below a denial of the host's disk. */
const MAX_IMAGE_BYTES = 256 * 1024 ** 3;

export class ImageService {
  constructor(
    private readonly db: Db,
    private readonly catalog: ImageCatalog,
    private readonly guard: Guard,
    private readonly imagesDir: string,
    /** Names of VMs whose disks are overlays on this image file (they would break if it went away). */
    private readonly usersOf: (disk: string) => Promise<string[]>,
  ) {}

  /**
   * At start: loads the imported images, and erases what an import cut short by a crash left in `images/import-*`
   * (an uploaded disk: someone's data, no registration covers it) — overwritten, then unlinked, like a purge. The
   * daemon audits what this returns.
   */
  async load(): Promise<Array<{ path: string; files: number; bytes: number; refused: number }>> {
    this.catalog.setImported(await this.db.selectFrom("images").selectAll().execute());
    const swept: Array<{ path: string; files: number; bytes: number; refused: number }> = [];
    if (!existsSync(this.imagesDir)) return swept;
    for (const name of readdirSync(this.imagesDir)) {
      if (!/^import-/.test(name)) continue;
      const path = join(this.imagesDir, name);
      const r = eraseTree(this.imagesDir, path);
      swept.push({ path, files: r.files, bytes: r.bytes, refused: r.refused.length });
    }
    return swept;
  }

  async import(ctx: RequestContext, body: AsyncIterable<Uint8Array>, input: unknown): Promise<ImageView> {
    const name = typeof (input as { name?: unknown })?.name === "string" ? String((input as { name: string }).name).slice(0, 64) : null;
    return this.guard.run(ctx, { action: "image.import", permission: "image.manage", target: { kind: "image", name } }, async () => {
      const req = parseOrThrow(importImageSchema, input, "image import");
      if (BUILTIN_IMAGES.includes(req.name) || (await this.db.selectFrom("images").select("name").where("name", "=", req.name).executeTakeFirst())) {
        throw new VigilError("VIGIL_CONFLICT", `Cannot import image ${q(req.name)}: an image with that name exists`, { field: "name" });
      }
      ensurePrivateDir(this.imagesDir);
      const staging = join(this.imagesDir, `import-${randomUUID()}`);
      ensurePrivateDir(staging);
      try {
        const upload = join(staging, `upload.${req.format}`);
        const received = await receive(body, upload);
        // Check what QEMU will be asked to read before it reads it.
        if (req.format === "qcow2") {
          const img = Qcow2Image.open(upload);
          try {
            // An image is standalone: no backing file, no external data file (the one check, qcow2.ts).
            assertSelfContained(img.header, req.name);
          } finally {
            img.close();
          }
        }
        const converted = join(staging, "disk.qcow2");
        await runCommand(QEMU_IMG, ["convert", "-f", req.format, "-O", "qcow2", upload, converted], { what: "Converting the imported disk", timeoutMs: 3_600_000 });
        const info = await imageInfo(converted, { format: "qcow2" });
        const dir = join(this.imagesDir, req.name);
        mkdirSync(dir, { recursive: true, mode: 0o755 });
        const disk = join(dir, "disk.qcow2");
        renameSync(converted, disk);
        chmodSync(disk, 0o444);
        const row: ImageRow = {
          name: req.name,
          disk,
          source_format: req.format,
          size: statSync(disk).size,
          virtual_size: info["virtual-size"],
          sha256: received.sha256,
          description: req.description || `imported ${req.format} disk`,
          source: req.source,
          created_by: ctx.actor.name,
          created_at: new Date().toISOString(),
        };
        await this.db.insertInto("images").values(row).execute();
        this.catalog.setImported([row]);
        return this.catalog.get(req.name).view;
      } finally {
        rmSync(staging, { recursive: true, force: true });
      }
    }, (v) => ({ name: v.name, sha256: (v.details as { sha256?: string }).sha256 }));
  }

  async delete(ctx: RequestContext, name: string): Promise<{ deleted: string }> {
    return this.guard.run(ctx, { action: "image.delete", permission: "image.manage", target: { kind: "image", name } }, async () => {
      const row = await this.db.selectFrom("images").selectAll().where("name", "=", name).executeTakeFirst();
      if (!row) throw new VigilError("VIGIL_IMAGE_NOT_FOUND", `Image ${q(name)} does not exist${name === "tiny" ? " as an imported image (the built-in image cannot be deleted)" : ""}`);
      const users = await this.usersOf(row.disk);
      if (users.length > 0) throw new VigilError("VIGIL_CONFLICT", `Cannot delete image ${q(name)}: VMs are built on it (${users.join(", ")})`);
      await this.db.deleteFrom("images").where("name", "=", name).execute();
      this.catalog.forgetImported(name);
      rmSync(join(this.imagesDir, name), { recursive: true, force: true });
      return { deleted: name };
    });
  }
}

/** Writes the request body to `path`, hashing it, refusing more than MAX_IMAGE_BYTES. */
async function receive(body: AsyncIterable<Uint8Array>, path: string): Promise<{ size: number; sha256: string }> {
  const out = createWriteStream(path, { mode: 0o600 });
  const errored = new Promise<never>((_, reject) => out.on("error", reject));
  errored.catch(() => undefined);
  const hash = createHash("sha256");
  let size = 0;
  try {
    for await (const chunk of body) {
      size += chunk.length;
      if (size > MAX_IMAGE_BYTES) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot import an image over ${MAX_IMAGE_BYTES} bytes`);
      hash.update(chunk);
      if (!out.write(chunk)) await Promise.race([new Promise<void>((r) => out.once("drain", () => r())), errored]);
    }
  } finally {
    await new Promise<void>((resolve) => out.end(resolve));
  }
  if (size === 0) throw new VigilError("VIGIL_BAD_REQUEST", "Cannot import an empty image");
  return { size, sha256: hash.digest("hex") };
}
