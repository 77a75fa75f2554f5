/**
 * qemu-img, the disk tool: overlays, blank disks, image inspection. Image files can come from outside (imports),
 * so `info` output is parsed as untrusted JSON and only the fields vigil uses are taken.
 */
import { chmodSync } from "node:fs";
import { z } from "zod";
import { runCommand } from "../util/run-command.ts";
import { parseOrThrow } from "../validation.ts";

export const QEMU_IMG = process.env.VIGIL_QEMU_IMG ?? "qemu-img";

/**
 * Makes a file that holds guest data (a disk, which can carry memory snapshots, i.e. guest RAM) readable by
 * vigil's user only. qemu-img creates files 0644 (less the umask); the VM directory is 0700 already, this is
 * the second layer. Call it on every VM data file vigil has a tool create or copy.
 */
export function makePrivate(file: string): void {
  chmodSync(file, 0o600);
}

/** A copy-on-write overlay on `backing` (which is only ever read); the new file is 0600. */
export async function createOverlay(file: string, backing: string, sizeMiB?: number): Promise<void> {
  const args = ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, file];
  if (sizeMiB !== undefined) args.push(`${sizeMiB}M`);
  await runCommand(QEMU_IMG, args, { what: "Creating a disk overlay" });
  makePrivate(file);
}

/** A standalone qcow2 copy of `source` (no backing file), grown to `sizeMiB` if given; the new file is 0600. */
export async function createFlatCopy(file: string, source: string, sizeMiB?: number): Promise<void> {
  await runCommand(QEMU_IMG, ["convert", "-q", "-O", "qcow2", source, file], { what: "Copying a disk image" });
  makePrivate(file);
  if (sizeMiB !== undefined) await runCommand(QEMU_IMG, ["resize", "-q", "-f", "qcow2", file, `${sizeMiB}M`], { what: "Growing a disk copy" });
}

/** A blank qcow2 disk; the new file is 0600. */
export async function createBlank(file: string, sizeMiB: number): Promise<void> {
  await runCommand(QEMU_IMG, ["create", "-q", "-f", "qcow2", file, `${sizeMiB}M`], { what: "Creating a blank disk" });
  makePrivate(file);
}

const infoSchema = z.looseObject({
  format: z.string(),
  "virtual-size": z.number().int().nonnegative(),
  "actual-size": z.number().int().nonnegative().optional(),
  "backing-filename": z.string().optional(),
  "full-backing-filename": z.string().optional(),
  "backing-filename-format": z.string().optional(),
  snapshots: z
    .array(z.looseObject({ id: z.string(), name: z.string(), "vm-state-size": z.number(), "date-sec": z.number() }))
    .optional(),
});

export type ImageInfo = z.output<typeof infoSchema>;

/** `qemu-img info` of one file (not its backing chain). `-U` so a running VM's disk can be inspected. */
export async function imageInfo(file: string, options: { format?: string } = {}): Promise<ImageInfo> {
  const args = ["info", "-U", "--output=json"];
  if (options.format) args.push("-f", options.format);
  args.push(file);
  const { stdout } = await runCommand(QEMU_IMG, args, { what: "Inspecting a disk image", maxOutputBytes: 4 * 1024 * 1024 });
  let json: unknown;
  try {
    json = JSON.parse(stdout);
  } catch {
    json = undefined;
  }
  return parseOrThrow(infoSchema, json, "qemu-img info output", "VIGIL_HOST");
}
