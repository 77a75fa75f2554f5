/**
 * The VM spec: what a VM is, as vigil persists it and as the QEMU command line is built from it. Users never
 * write host paths: a create request names an image, and `resolveSpec` turns it into a full spec with the
 * image's files. That keeps "read /etc/shadow as a disk" out of reach of anyone who may create a VM.
 */
import { z } from "zod";
import { randomBytes } from "node:crypto";
import { VigilError, q } from "../errors.ts";

/** VM names are DNS-label-like so they are safe in paths, hostnames and messages. */
export const vmNameSchema = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,62}$/, "must be 1-63 characters: lower-case letters, digits and '-', starting with a letter");

/** Device and disk names: short identifiers usable as QEMU ids. */
const deviceNameSchema = z
  .string()
  .regex(/^[a-z][a-z0-9]{0,15}$/, "must be 1-16 lower-case letters and digits, starting with a letter");

/** Absolute host path without characters that would need escaping anywhere (commas, controls). */
const hostPathSchema = z
  .string()
  .max(1024)
  .regex(/^\/[A-Za-z0-9._\/+@=:-]*$/, "must be an absolute path of letters, digits and ._/+@=:-");

/** Kernel command-line words a user may add: no quotes, no controls, no shell or QEMU syntax. */
export const cmdlineSchema = z
  .string()
  .max(1024)
  .regex(/^[A-Za-z0-9._\/+@=:, -]*$/, "may contain only letters, digits, spaces and ._/+@=:,-");

export const macSchema = z
  .string()
  .regex(/^52:54:00(:[0-9a-f]{2}){3}$/, "must be a locally administered QEMU MAC 52:54:00:xx:xx:xx in lower case");

export const MACHINE_TYPE = "pc-i440fx-7.2";

const bootSchema = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("kernel"), kernel: hostPathSchema, initrd: hostPathSchema, cmdline: cmdlineSchema }),
  z.strictObject({ kind: z.literal("disk") }),
]);

const diskSchema = z.strictObject({
  name: deviceNameSchema,
  /** The image this disk is a copy-on-write overlay of; absent for a blank disk. */
  backing: hostPathSchema.optional(),
  /** Virtual size of a blank disk (or a grown overlay); absent = the backing image's size. */
  sizeMiB: z.number().int().min(1).max(16 * 1024 * 1024).optional(),
});

/** A vigil network's name (docs/network.md): the bridge `vb-<name>` must fit IFNAMSIZ. */
export const networkNameSchema = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,11}$/, "must be a network name: 1-12 lower-case letters, digits and '-', starting with a letter");

const nicSchema = z.discriminatedUnion("mode", [
  z.strictObject({
    name: deviceNameSchema,
    /** User-mode networking (slirp). */
    mode: z.literal("user"),
    /** `restrict=on`: the guest cannot reach the host or the outside world. */
    restrict: z.boolean(),
    mac: macSchema,
  }),
  z.strictObject({
    name: deviceNameSchema,
    /** A tap on a vigil network's bridge, in vigil's network namespace (docs/network.md). */
    mode: z.literal("bridge"),
    network: networkNameSchema,
    mac: macSchema,
  }),
]);

/** The persisted, fully resolved spec. */
export const vmSpecSchema = z.strictObject({
  version: z.literal(1),
  name: vmNameSchema,
  machine: z.string().regex(/^[a-z0-9.-]{1,40}$/, "must be a QEMU machine type such as pc-i440fx-7.2"),
  cpu: z.enum(["max", "qemu64", "host"]),
  vcpus: z.number().int().min(1).max(64),
  memoryMiB: z.number().int().min(64).max(1024 * 1024),
  /** Name of the image the VM was created from (null for a VM built from blank disks). */
  image: z.string().nullable(),
  boot: bootSchema,
  disks: z.array(diskSchema).max(16),
  nics: z.array(nicSchema).max(8),
  /** The guest agent channel (virtio-serial port org.vigil.agent.0). */
  agent: z.boolean(),
  /** The extra-VM monotonic store channel (virtio-serial port org.vigil.vtime.0). */
  vtime: z.boolean().default(true),
  /** Where the disks live: absent or "local" = the VM's own directory; "shared" = the shared storage (docs/cluster.md). */
  storage: z.enum(["local", "shared"]).optional(),
});

export type VmSpec = z.output<typeof vmSpecSchema>;
export type DiskSpec = VmSpec["disks"][number];
export type NicSpec = VmSpec["nics"][number];
export type BridgeNicSpec = Extract<NicSpec, { mode: "bridge" }>;

/** The NICs plugged into a vigil network (each needs a tap, hence the jail). */
export function bridgedNics(spec: Pick<VmSpec, "nics">): BridgeNicSpec[] {
  return spec.nics.filter((n): n is BridgeNicSpec => n.mode === "bridge");
}

/** User-mode NICs with restrict=off: slirp opens host sockets for them (the loopback guard, the host netns). */
export function openUserNics(spec: Pick<VmSpec, "nics">): NicSpec[] {
  return spec.nics.filter((n) => n.mode === "user" && !n.restrict);
}

/** Ownership fields of a create request (issue: identity & audit); optional unless policy requires them. */
export const ownershipInputSchema = {
  owner: z.string().min(1).max(64).optional(),
  approver: z.string().min(1).max(64).optional(),
  purpose: z.string().min(1).max(500).optional(),
  expiresAt: z.iso.date().or(z.iso.datetime()).optional(),
  labels: z.record(z.string().regex(/^[a-z][a-z0-9_.-]{0,62}$/), z.string().max(200)).optional(),
};

/** What a user sends to create a VM. Everything but the name has a default. */
export const createVmRequestSchema = z.strictObject({
  name: vmNameSchema,
  image: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/, "must be an image name as shown by `vigil image list`").default("tiny"),
  vcpus: z.number().int().min(1).max(64).default(1),
  memoryMiB: z.number().int().min(64).max(1024 * 1024).default(256),
  cpu: z.enum(["max", "qemu64", "host"]).optional(),
  /** Extra kernel command-line words for kernel-booted images. */
  cmdline: cmdlineSchema.optional(),
  /** Blank data disks besides the image's own. */
  disks: z.array(z.strictObject({ name: deviceNameSchema, sizeMiB: z.number().int().min(1).max(16 * 1024 * 1024) })).max(15).default([]),
  /**
   * Network cards; default one user-mode NIC with restrict=on (no way out: deny by default). A card naming a
   * `network` is bridged onto that vigil network (then `restrict` means nothing and is refused).
   */
  nics: z
    .array(
      z
        .strictObject({ restrict: z.boolean().optional(), network: networkNameSchema.optional(), mac: macSchema.optional() })
        .refine((n) => n.network === undefined || n.restrict === undefined, { path: ["restrict"], message: "Cannot be given with \"network\": restrict applies to user-mode NICs only" }),
    )
    .max(8)
    .default([{ restrict: true }]),
  agent: z.boolean().default(true),
  /** The monotonic store channel (org.vigil.vtime.0): state that survives reverts. */
  vtime: z.boolean().default(true),
  /** "shared": the disks go on the agent's shared storage (docs/cluster.md "Shared storage and HA restarts"). */
  storage: z.enum(["local", "shared"]).default("local"),
  ...ownershipInputSchema,
});

export type CreateVmRequest = z.output<typeof createVmRequestSchema>;

/** An image as the spec resolver needs it. */
export interface ResolvableImage {
  name: string;
  boot: { kind: "kernel"; kernel: string; initrd: string; cmdline: string } | { kind: "disk" };
  /** The image's disk, used as the backing file of the VM's first disk. */
  disk: string | undefined;
}

/** A random locally administered MAC in QEMU's 52:54:00 range. */
export function randomMac(): string {
  const b = randomBytes(3);
  return `52:54:00:${[...b].map((x) => x.toString(16).padStart(2, "0")).join(":")}`;
}

/** Turns a validated create request and its image into the full spec. Pure except for fresh MACs. */
export function resolveSpec(req: CreateVmRequest, image: ResolvableImage, defaults: { cpu: VmSpec["cpu"] }): VmSpec {
  const boot: VmSpec["boot"] =
    image.boot.kind === "kernel"
      ? { ...image.boot, cmdline: [image.boot.cmdline, `vigil.hostname=${req.name}`, req.cmdline ?? ""].filter(Boolean).join(" ") }
      : { kind: "disk" };
  const disks: DiskSpec[] = [];
  // A shared VM's root disk is a standalone copy of the image (its backing file is on this host only).
  if (image.disk) disks.push({ name: "root", ...(req.storage === "shared" ? {} : { backing: image.disk }) });
  req.disks.forEach((d, i) => {
    if (disks.some((x) => x.name === d.name)) {
      throw new VigilError("VIGIL_INVALID_SPEC", `Invalid VM spec: "disks.${i}.name" ${q(d.name)} is already used${d.name === "root" ? " by the image's own disk" : ""}: disk names must be unique`, { field: `disks.${i}.name` });
    }
    disks.push({ name: d.name, sizeMiB: d.sizeMiB });
  });
  return {
    version: 1,
    name: req.name,
    machine: MACHINE_TYPE,
    cpu: req.cpu ?? defaults.cpu,
    vcpus: req.vcpus,
    memoryMiB: req.memoryMiB,
    image: image.name,
    boot,
    disks,
    nics: req.nics.map((n, i): NicSpec => {
      const mac = n.mac ?? randomMac();
      if (n.network === undefined) return { name: `net${i}`, mode: "user", restrict: n.restrict ?? true, mac };
      if (n.restrict !== undefined) {
        throw new VigilError("VIGIL_INVALID_SPEC", `Invalid VM spec: "nics.${i}.restrict" cannot be given with "nics.${i}.network": restrict applies to user-mode NICs only (a bridged NIC's traffic is the firewall's business)`, { field: `nics.${i}.restrict` });
      }
      return { name: `net${i}`, mode: "bridge", network: n.network, mac };
    }),
    agent: req.agent,
    vtime: req.vtime,
    ...(req.storage === "shared" ? { storage: "shared" as const } : {}),
  };
}
