/**
 * The vtime channel's wire protocol (virtio-serial port org.vigil.vtime.0, newline-delimited JSON). Here the
 * guest is the client: it asks, the host answers. Everything the guest sends is hostile: lines are capped,
 * each request is validated against its operation's schema, names are short identifiers, and `rid` (the
 * guest's idempotency key) makes retries safe.
 */
import { z } from "zod";

export const VTIME_PORT_NAME = "org.vigil.vtime.0";
export const MAX_VTIME_LINE_BYTES = 4096;

const rid = z.string().regex(/^[A-Za-z0-9-]{8,64}$/, "must be 8-64 letters, digits and -");
const name = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, "must be 1-64 letters, digits and ._-");
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

export const vtimeRequestSchema = z.discriminatedUnion("op", [
  z.strictObject({ rid, op: z.literal("ping") }),
  z.strictObject({ rid, op: z.literal("read"), name }),
  z.strictObject({ rid, op: z.literal("incr"), name, by: z.number().int().min(1).max(2 ** 31).default(1) }),
  z.strictObject({ rid, op: z.literal("cas"), name, expect: count, value: count }),
  z.strictObject({ rid, op: z.literal("append"), stream: name, data: z.string().regex(/^[A-Za-z0-9+/=._:-]{0,1024}$/, "must be at most 1024 base64-safe characters") }),
  z.strictObject({ rid, op: z.literal("records"), stream: name, after: count.default(0), limit: z.number().int().min(1).max(50).default(20) }),
  z.strictObject({ rid, op: z.literal("time") }),
]);

export type VtimeRequest = z.output<typeof vtimeRequestSchema>;
