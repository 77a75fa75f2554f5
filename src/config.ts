/**
 * Site configuration: an optional `config.json` in VIGIL_HOME, validated strictly (an unknown key is an error,
 * not a silently ignored typo). Everything has a secure default.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { VigilError, messageOf, q } from "./errors.ts";
import { parseOrThrow } from "./validation.ts";

const quotaLimit = z.number().int().min(0).max(1_000_000_000);

/** Per-owner limits; an absent one is unlimited. */
export const quotaLimitsSchema = z.strictObject({
  /** How many VMs the owner may have. */
  vms: quotaLimit.optional(),
  /** Total memory of the owner's live (starting, running, paused) VMs, MiB. */
  memoryMiB: quotaLimit.optional(),
  /** Total size of the owner's VMs' disks, MiB. */
  diskMiB: quotaLimit.optional(),
});
export type QuotaLimits = z.output<typeof quotaLimitsSchema>;

/** 100 VMs and 4 TiB of disk per owner; memory is bounded by the host's (the sum over every owner). */
export const DEFAULT_QUOTAS: QuotaLimits = { vms: 100, diskMiB: 4 * 1024 * 1024 };

export const configSchema = z.strictObject({
  policy: z
    .strictObject({
      /** Every VM must name an approver, a purpose and an expiry date. */
      requireOwnership: z.boolean().default(false),
      /**
       * What happens to a VM past its expiry (a bare date means the end of that day, UTC): flagged only, or
       * stopped — and then refused start, restart and any revert that would start it.
       */
      expiredVms: z.enum(["flag", "stop"]).default("flag"),
      /** How often expiry is checked. */
      expiryCheckSeconds: z.number().int().min(1).max(86_400).default(60),
    })
    .default({ requireOwnership: false, expiredVms: "flag", expiryCheckSeconds: 60 }),
  /**
   * Site defaults for what one owner (a user or a group) may hold: VMs, total memory of its live VMs, total
   * disk size (blank and grown disks; an overlay on an image counts its requested size only). An admin may set
   * other limits per user (`vigil user set NAME --quota-…`). The host's memory bounds the sum over all owners
   * whatever the quotas say.
   */
  quotas: quotaLimitsSchema.default(DEFAULT_QUOTAS),
  hooks: z
    .strictObject({
      /**
       * Run after a revert forced below a VM's security floor, to bring it back up (re-install updates, rotate
       * credentials). An absolute path to an executable the admin installed; it gets the VM and snapshot in its
       * environment (VIGIL_VM, VIGIL_VM_ID, VIGIL_SNAPSHOT, VIGIL_REASON, VIGIL_FLOOR as JSON).
       */
      reapply: z.string().regex(/^\/[A-Za-z0-9._\/+-]+$/, "must be an absolute path").optional(),
    })
    .default({}),
  consoleLog: z
    .strictObject({
      /** console.log is moved to console.log.1 past this size (host/console-log.ts): disk use ≈ 2× this at most. */
      maxBytes: z.number().int().min(64 * 1024).max(1024 * 1024 * 1024).default(1024 * 1024),
    })
    .default({ maxBytes: 1024 * 1024 }),
  audit: z
    .strictObject({
      /**
       * Where the signed tree head is published (at most once a second while records are written, and at
       * shutdown): an append-only file, best on another mount or host (`{"kind":"file","path":…}`), or an HTTP
       * witness such as `vigil witness serve` (`{"kind":"http","url":…}`). At start the daemon compares each
       * witness's latest head with the database; a disagreement is a tamper finding.
       */
      witnesses: z
        .array(
          z.discriminatedUnion("kind", [
            z.strictObject({ kind: z.literal("file"), path: z.string().max(4096).regex(/^\//, "must be an absolute path") }),
            z.strictObject({ kind: z.literal("http"), url: z.string().max(2048).regex(/^https?:\/\/[^\s]+$/, "must be an http(s) URL") }),
          ]),
        )
        .max(8)
        .default([]),
    })
    .default({ witnesses: [] }),
});

export type VigilConfig = z.output<typeof configSchema>;

export function loadConfig(home: string): VigilConfig {
  const path = join(home, "config.json");
  if (!existsSync(path)) return configSchema.parse({});
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot read ${q(path)}: ${messageOf(err)}`);
  }
  return parseOrThrow(configSchema, raw, `configuration in ${path}`);
}
