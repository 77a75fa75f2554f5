/**
 * The guest agent's wire protocol (newline-delimited JSON over the virtio-serial port org.vigil.agent.0), seen
 * from the host. Everything the guest sends is hostile input: lines are length-capped, parsed as JSON, and each
 * reply is validated against the schema of the command it answers before any field is used. Every schema
 * is strict: a message with a field the protocol does not define is refused, not stripped (a padded `ready`
 * would otherwise pass as a valid event and slip past the flood limit).
 */
import { z } from "zod";

export const AGENT_PORT_NAME = "org.vigil.agent.0";
export const AGENT_PROTOCOL = 1;
/** exec output is capped at 64 KiB per stream in the guest; base64 and JSON framing stay well below this. */
export const MAX_AGENT_LINE_BYTES = 256 * 1024;

/** Arguments the host sends are restricted so the shell agent can parse them without escaping. */
export const agentArgSchema = z.string().max(256).regex(/^[A-Za-z0-9._\/=:,+@-]*$/, "may contain only letters, digits and ._/=:,+@-");

export const readyEventSchema = z.strictObject({ event: z.literal("ready"), agent: z.string().max(64), protocol: z.number().int() });

const replyBase = z.strictObject({ id: z.number().int().min(-1).max(Number.MAX_SAFE_INTEGER) });
export const okReplySchema = replyBase.extend({ ok: z.literal(true), result: z.unknown() });
export const errorReplySchema = replyBase.extend({ ok: z.literal(false), error: z.string().max(1024) });
export const replySchema = z.union([okReplySchema, errorReplySchema]);

export const pingResultSchema = z.strictObject({ pong: z.literal(true) });

export const infoResultSchema = z.strictObject({
  kernel: z.string().max(256),
  uptime: z.number().nonnegative(),
  hostname: z.string().max(256),
  agent: z.string().max(64),
  protocol: z.number().int(),
  bootId: z.string().max(64),
});
export type GuestInfo = z.output<typeof infoResultSchema>;

export const guestProcessSchema = z.strictObject({
  pid: z.number().int().positive().max(4_194_304),
  ppid: z.number().int().nonnegative().max(4_194_304),
  state: z.string().max(2),
  comm: z.string().max(64),
});
export const psResultSchema = z.strictObject({ processes: z.array(guestProcessSchema).max(100_000) });
export type GuestProcess = z.output<typeof guestProcessSchema>;

const base64Schema = z.string().max(128 * 1024).regex(/^[A-Za-z0-9+/]*={0,2}$/, "must be base64");
export const execResultSchema = z.strictObject({
  exitCode: z.number().int().min(-1).max(255),
  stdout: base64Schema,
  stderr: base64Schema,
  truncated: z.boolean(),
});

export const fsfreezeResultSchema = z.strictObject({ frozen: z.boolean(), mounted: z.boolean() });

/** Commands the host may run through `exec`; the guest agent enforces its own copy of this list. */
export const EXEC_ALLOWED = [
  "uname", "cat", "dmesg", "ls", "ps", "sha256sum", "sync", "fsfreeze", "mount", "df", "free", "date", "head", "tail", "stat",
  "counter", "rng-sample", "dmesg-grep", "reseed-count", "vtime", "otp-init", "otp-verify", "rng-pool", "data-write",
  // The network tests' helpers (docs/network.md, "VM NICs"): address, echo listener, connect, ping, spoof.
  "net-addr", "net-listen", "net-send", "net-ping", "net-spoof", "net-sink", "net-bulk", "net-rtt",
  // The migration tests' helpers (docs/cluster.md, "The migration engine"): a RAM counter logged to disk, a memory dirtier.
  "ticker", "mem-dirty",
] as const;
