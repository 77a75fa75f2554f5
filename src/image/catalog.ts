/**
 * The image catalog: what a VM can be created from. The built-in image `tiny` is built by set-up from Debian
 * packages into the shared cache (guest/build-tiny.sh); its manifest says what is in it and is checked before
 * use. Templates and imported images join the catalog in later capabilities.
 */
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import type { ImageRow } from "../inventory/schema.ts";
import { z } from "zod";
import { VigilError, q } from "../errors.ts";
import type { ResolvableImage } from "../vm/spec.ts";

const fileEntry = z.object({ sha256: z.string().regex(/^[0-9a-f]{64}$/), size: z.number().int().nonnegative() });

export const tinyManifestSchema = z.looseObject({
  format: z.literal(1),
  name: z.literal("tiny"),
  key: z.string(),
  builtAt: z.string(),
  kernel: z.looseObject({ package: z.string(), version: z.string(), release: z.string() }),
  busybox: z.looseObject({ package: z.string(), version: z.string() }),
  files: z.looseObject({ vmlinuz: fileEntry, "initrd.img": fileEntry, "disk.qcow2": fileEntry }),
  cmdline: z.string(),
});

export type TinyManifest = z.output<typeof tinyManifestSchema>;

/** The built-in `debian-12` image (guest/build-debian12.sh): a bootable Debian root on a GPT qcow2, kernel-booted. */
export const debian12ManifestSchema = z.looseObject({
  format: z.literal(1),
  name: z.literal("debian-12"),
  key: z.string(),
  builtAt: z.string(),
  suite: z.literal("bookworm"),
  packages: z.number().int().positive(),
  kernel: z.looseObject({ package: z.string(), version: z.string(), release: z.string() }),
  files: z.looseObject({ vmlinuz: fileEntry, "initrd.img": fileEntry, "disk.qcow2": fileEntry }),
  cmdline: z.string(),
});

export type Debian12Manifest = z.output<typeof debian12ManifestSchema>;

export interface ImageView {
  name: string;
  kind: "builtin" | "template" | "imported";
  description: string;
  dir: string;
  sizeBytes: number;
  details: Record<string, unknown>;
}

export interface CatalogImage extends ResolvableImage {
  view: ImageView;
}

/** The images set-up builds; their names are never free for an import. */
export const BUILTIN_IMAGES: readonly string[] = ["tiny", "debian-12"];

export class ImageCatalog {
  /** Images brought in with `vigil image import`, kept in the inventory and mirrored here for quick lookups. */
  private readonly imported = new Map<string, ImageRow>();

  constructor(private readonly cacheDir: string) {}

  /** Loads (or adds) imported images; called at start and after an import. */
  setImported(rows: readonly ImageRow[]): void {
    for (const r of rows) this.imported.set(r.name, r);
  }

  forgetImported(name: string): void {
    this.imported.delete(name);
  }

  private importedImage(name: string): CatalogImage | undefined {
    const r = this.imported.get(name);
    if (!r) return undefined;
    return {
      name: r.name,
      boot: { kind: "disk" },
      disk: r.disk,
      view: {
        name: r.name,
        kind: "imported",
        description: r.description,
        dir: dirname(r.disk),
        sizeBytes: r.size,
        details: { sourceFormat: r.source_format, virtualSize: r.virtual_size, sha256: r.sha256, source: r.source, importedBy: r.created_by, importedAt: r.created_at },
      },
    };
  }

  /** The directory of a built-in image's current build (`images/NAME/current`), undefined if set-up has not built it. */
  #currentDir(name: string): string | undefined {
    const link = join(this.cacheDir, "images", name, "current");
    if (!existsSync(join(link, "manifest.json"))) return undefined;
    return realpathSync(link);
  }

  /** A built-in image's manifest, checked: a bad one is the host's problem, named with how to rebuild it. */
  #manifest<T>(name: string, dir: string, schema: z.ZodType<T>, rebuild: string): T {
    try {
      return schema.parse(JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")));
    } catch (err) {
      throw new VigilError("VIGIL_HOST", `The ${name} image in ${q(dir)} has a bad manifest (rebuild it: ${rebuild})`, { cause: err });
    }
  }

  /** The directory of the current tiny image, or undefined if set-up has not built it. */
  tinyDir(): string | undefined {
    return this.#currentDir("tiny");
  }

  private loadTiny(): CatalogImage | undefined {
    const dir = this.tinyDir();
    if (!dir) return undefined;
    const manifest: TinyManifest = this.#manifest("tiny", dir, tinyManifestSchema, "npm start");
    const f = manifest.files;
    return {
      name: "tiny",
      boot: { kind: "kernel", kernel: join(dir, "vmlinuz"), initrd: join(dir, "initrd.img"), cmdline: manifest.cmdline },
      disk: join(dir, "disk.qcow2"),
      view: {
        name: "tiny",
        kind: "builtin",
        description: `Debian ${manifest.kernel.release} kernel + busybox initramfs with the vigil agent`,
        dir,
        sizeBytes: f.vmlinuz.size + f["initrd.img"].size + f["disk.qcow2"].size,
        details: { kernel: manifest.kernel, busybox: manifest.busybox, key: manifest.key, builtAt: manifest.builtAt },
      },
    };
  }

  /** The directory of the current debian-12 image, or undefined if set-up has not built it. */
  debian12Dir(): string | undefined {
    return this.#currentDir("debian-12");
  }

  private loadDebian12(): CatalogImage | undefined {
    const dir = this.debian12Dir();
    if (!dir) return undefined;
    const manifest: Debian12Manifest = this.#manifest("debian-12", dir, debian12ManifestSchema, "guest/build-debian12.sh");
    const f = manifest.files;
    return {
      name: "debian-12",
      boot: { kind: "kernel", kernel: join(dir, "vmlinuz"), initrd: join(dir, "initrd.img"), cmdline: manifest.cmdline },
      disk: join(dir, "disk.qcow2"),
      view: {
        name: "debian-12",
        kind: "builtin",
        description: `Debian 12 (${manifest.suite} minbase, ${manifest.packages} packages) with the ${manifest.kernel.release} kernel and the vigil agent`,
        dir,
        sizeBytes: f.vmlinuz.size + f["initrd.img"].size + f["disk.qcow2"].size,
        details: { kernel: manifest.kernel, suite: manifest.suite, packages: manifest.packages, key: manifest.key, builtAt: manifest.builtAt },
      },
    };
  }

  list(): ImageView[] {
    const tiny = this.loadTiny();
    const debian12 = this.loadDebian12();
    const imported = [...this.imported.keys()].sort().map((n) => this.importedImage(n)!.view);
    return [...(tiny ? [tiny.view] : []), ...(debian12 ? [debian12.view] : []), ...imported];
  }

  get(name: string): CatalogImage {
    const image = name === "tiny" ? this.loadTiny() : name === "debian-12" ? this.loadDebian12() : this.importedImage(name);

    if (!image) {
      const hint = name === "tiny" ? " (set-up has not built it yet: run npm start or guest/build-tiny.sh)" : name === "debian-12" ? " (set-up has not built it yet: run guest/build-debian12.sh as root)" : " (templates are cloned: vigil vm clone TEMPLATE NAME)";
      throw new VigilError("VIGIL_IMAGE_NOT_FOUND", `Image ${q(name)} does not exist${hint}`, { field: "image" });
    }
    return image;
  }
}
