/**
 * Response schemas of the HTTP API, registered as OpenAPI components. Request schemas come from the
 * capabilities themselves (one schema language, one definition), so the API cannot drift from what the
 * services accept.
 */
import { z } from "@hono/zod-openapi";
import { vmSpecSchema } from "../vm/spec.ts";
import { VM_STATES } from "../vm/state-machine.ts";
import { ROLES } from "../auth/permissions.ts";

export const ErrorSchema = z
  .object({ error: z.object({ code: z.string(), message: z.string(), field: z.string().optional() }) })
  .openapi("Error");

export const VmSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    state: z.enum(VM_STATES),
    host: z.string(),
    accelerator: z.string().nullable(),
    vmgenid: z.string(),
    generation: z.number().int(),
    pid: z.number().int().nullable(),
    owner: z.string(),
    approver: z.string().nullable(),
    purpose: z.string().nullable(),
    expiresAt: z.string().nullable(),
    expired: z.boolean(),
    labels: z.record(z.string(), z.string()),
    lineage: z.record(z.string(), z.unknown()),
    template: z.boolean(),
    createdBy: z.string(),
    createdAt: z.string(),
    stateChangedAt: z.string(),
    spec: vmSpecSchema,
    nics: z.array(z.object({ name: z.string(), network: z.string(), mac: z.string(), ip: z.string(), tap: z.string() })),
    paths: z.object({
      dir: z.string(),
      qmpSocket: z.string(),
      serialSocket: z.string(),
      agentSocket: z.string(),
      consoleLog: z.string(),
      qemuLog: z.string(),
      pidFile: z.string(),
      disks: z.record(z.string(), z.string()),
    }),
    confinement: z.object({
      mode: z.enum(["jail", "off"]),
      seccomp: z.string(),
      process: z
        .object({
          uid: z.number().int(),
          gid: z.number().int(),
          noNewPrivs: z.boolean(),
          seccompMode: z.number().int(),
          capEff: z.string(),
          capBnd: z.string(),
          namespaces: z.array(z.string()),
          cgroups: z.array(z.string()),
          mounts: z.array(z.string()),
        })
        .nullable(),
    }),
  })
  .openapi("Vm");

export const POSTURE_STATES = ["current", "stale", "vulnerable", "infected", "unknown"] as const;
/** A listed VM carries its computed posture (docs/transience.md "Posture"). */
export const VmListSchema = z.object({ vms: z.array(VmSchema.extend({ posture: z.enum(POSTURE_STATES).optional() })) }).openapi("VmList");

/** `GET /v1/vms?view=summary`: what an inventory lists of each VM (src/vm/vm-view.ts `vmSummary`). */
export const VmSummarySchema = z
  .object({
    id: z.string(),
    name: z.string(),
    state: z.enum(VM_STATES),
    host: z.string(),
    owner: z.string(),
    purpose: z.string().nullable(),
    expiresAt: z.string().nullable(),
    expired: z.boolean(),
    labels: z.record(z.string(), z.string()),
    template: z.boolean(),
    generation: z.number().int(),
    vcpus: z.number().int(),
    memoryMiB: z.number().int(),
    stateChangedAt: z.string(),
    posture: z.enum(POSTURE_STATES).optional(),
  })
  .openapi("VmSummary");
export const VmSummaryListSchema = z.object({ vms: z.array(VmSummarySchema) }).openapi("VmSummaryList");

export const ImageSchema = z
  .object({ name: z.string(), kind: z.enum(["builtin", "template", "imported"]), description: z.string(), dir: z.string(), sizeBytes: z.number(), details: z.record(z.string(), z.unknown()) })
  .openapi("Image");

export const UserSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    roles: z.array(z.enum(ROLES)),
    introspect: z.boolean(),
    disabled: z.boolean(),
    groups: z.array(z.string()),
    createdAt: z.string(),
    createdBy: z.string(),
    quotas: z.object({ vms: z.number().optional(), memoryMiB: z.number().optional(), diskMiB: z.number().optional() }).nullable(),
  })
  .openapi("User");

export const AuditRecordSchema = z
  .object({
    seq: z.number().int(),
    id: z.string(),
    time: z.string(),
    actor: z.string(),
    action: z.string(),
    target: z.object({ kind: z.string(), id: z.string().nullable(), name: z.string().nullable() }),
    result: z.enum(["ok", "denied", "error", "intent"]),
    host: z.string(),
    requestId: z.string().nullable(),
    details: z.record(z.string(), z.unknown()),
    prevHash: z.string(),
    hash: z.string(),
  })
  .openapi("AuditRecord");

export const GuestProcessListSchema = z
  .object({ processes: z.array(z.object({ pid: z.number().int(), ppid: z.number().int(), state: z.string(), comm: z.string() })) })
  .openapi("GuestProcessList");

export const VmNameParams = z.object({ name: z.string().max(64).openapi({ param: { name: "name", in: "path" }, example: "demo" }) });
