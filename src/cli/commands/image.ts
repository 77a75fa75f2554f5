/** `vigil image`: the images VMs are created from (list, import a disk, delete). */
import { type Command, Option } from "commander";
import { basename, resolve as resolvePath } from "node:path";
import { ApiError, call, upload } from "../client.ts";
import { clearLine, printJson, printTable, progressLine } from "../output.ts";
import { enc, withProgress } from "./common.ts";

/** Adds `image` and its subcommands. */
export function registerImages(program: Command): void {
  const image = program.command("image").description("Images VMs are created from");
  image
    .command("list")
    .description("List images (the built-in `tiny` and templates)")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { images } = await call<{ images: Array<Record<string, unknown>> }>("GET", "/v1/images");
      if (o.json) return printJson(images);
      printTable(
        images.map((i) => ({ ...i, size: `${Math.round(Number(i.sizeBytes) / 1024 / 1024)}M` })),
        [
          ["name", "NAME"],
          ["kind", "KIND"],
          ["size", "SIZE"],
          ["description", "DESCRIPTION"],
        ],
      );
    });

  image
    .command("import <file>")
    .description("Bring an existing disk in as an image (standalone qcow2 or raw; converted to qcow2)")
    .requiredOption("--name <name>", "the image's name")
    .addOption(new Option("--format <format>", "the file's format").choices(["qcow2", "raw"]))
    .option("--description <text>", "what it is")
    .option("--json", "machine-readable output")
    .action(async (file: string, o: { name: string; format?: string; description?: string; json?: boolean }) => {
      const abs = resolvePath(file);
      const format = o.format ?? (abs.endsWith(".qcow2") ? "qcow2" : abs.endsWith(".raw") || abs.endsWith(".img") ? "raw" : undefined);
      if (!format) throw new ApiError("VIGIL_BAD_REQUEST", "Cannot tell the disk's format from its name: use --format qcow2|raw", 0, "format");
      const query = new URLSearchParams({ name: o.name, format, source: abs, ...(o.description ? { description: o.description } : {}) });
      const img = await withProgress(`Importing ${basename(abs)}`, (rid) => upload<Record<string, unknown>>(`/v1/images?${query.toString()}`, abs, { requestId: rid, contentType: "application/octet-stream", onBytes: (d, t) => progressLine("Uploading", d, t) }));
      clearLine();
      if (o.json) return printJson(img);
      process.stdout.write(`Imported ${basename(abs)} as image ${o.name}\n`);
    });
  image
    .command("delete <name>")
    .description("Delete an imported image that no VM is built on")
    .action(async (name: string) => {
      await call("DELETE", `/v1/images/${enc(name)}`);
      process.stdout.write(`Image ${name} deleted\n`);
    });
}
