/**
 * A VM's firewall policy (docs/network.md, "The firewall"): ordered rules, first match wins, plus a default verdict
 * per direction. This is VM data: it is validated strictly here (unknown fields, bad ports, ports on icmp, a bad
 * peer are all errors naming the field) and everything downstream (the nft compiler) may trust its shape.
 */
import { z } from "zod";
import { VigilError, q } from "../../errors.ts";
import { parseOrThrow } from "../../validation.ts";

export const MAX_RULES = 2000;

const PORT_RE = /^(\d{1,5})(?:-(\d{1,5}))?$/;
const LABEL_RE = /^([a-z0-9][a-z0-9._-]{0,62})=([A-Za-z0-9._-]{0,63})$/;
const VM_NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** Parses "a.b.c.d/len" (or a bare address = /32) into its canonical network form, or null. */
export function parseCidr(text: string): { addr: string; len: number } | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:\/(\d{1,2}))?$/.exec(text);
  if (!m) return null;
  const octets = m.slice(1, 5).map(Number);
  if (octets.some((o) => o > 255) || m.slice(1, 5).some((o) => o.length > 1 && o.startsWith("0"))) return null;
  const len = m[5] === undefined ? 32 : Number(m[5]);
  if (len > 32) return null;
  const value = octets.reduce((acc, o) => acc * 256 + o, 0);
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  const net = (value & mask) >>> 0;
  return { addr: [24, 16, 8, 0].map((s) => (net >>> s) & 255).join("."), len };
}

const peerSchema = z.union([
  z.strictObject({ cidr: z.string().refine((s) => parseCidr(s) !== null, { message: 'must be an IPv4 address or CIDR such as "10.77.0.0/24"' }) }),
  z.strictObject({ vm: z.string().regex(VM_NAME_RE, { message: "must be a VM name" }) }),
  z.strictObject({ label: z.string().regex(LABEL_RE, { message: 'must be "key=value" (a label)' }) }),
], { error: 'must be one of {cidr: "10.77.0.0/24"}, {vm: "NAME"} or {label: "k=v"}' });

function portsOk(s: string): boolean {
  const m = PORT_RE.exec(s);
  if (!m) return false;
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  return lo >= 1 && hi <= 65535 && lo <= hi;
}

export const ruleSchema = z
  .strictObject({
    direction: z.enum(["in", "out"]),
    action: z.enum(["accept", "drop"]),
    proto: z.enum(["tcp", "udp", "icmp", "any"]),
    ports: z.string().refine(portsOk, { message: 'must be a port "N" or a range "N-M" within 1-65535, N ≤ M' }).optional(),
    peer: peerSchema.optional(),
    comment: z
      .string()
      .max(200, { message: "must be at most 200 characters" })
      .regex(/^[\x20-\x7e]*$/, { message: "must be printable ASCII" })
      .optional(),
  })
  .superRefine((r, ctx) => {
    if (r.ports !== undefined && r.proto !== "tcp" && r.proto !== "udp") {
      ctx.addIssue({ code: "custom", path: ["ports"], message: `is allowed only with proto tcp or udp (proto is ${r.proto})` });
    }
  });

export const policySchema = z.strictObject({
  rules: z.array(ruleSchema).max(MAX_RULES, { message: `must have at most ${MAX_RULES} rules` }),
  defaults: z.strictObject({ in: z.enum(["accept", "drop"]), out: z.enum(["accept", "drop"]) }),
});

export type Rule = z.output<typeof ruleSchema>;
export type Policy = z.output<typeof policySchema>;
export type Peer = NonNullable<Rule["peer"]>;

/** What a VM without a stored policy gets: deny inbound, allow outbound (OpenStack/Proxmox habit). */
export function defaultPolicy(): Policy {
  return { rules: [], defaults: { in: "drop", out: "accept" } };
}

export function parsePolicy(input: unknown): Policy {
  return parseOrThrow(policySchema, input, "firewall policy");
}

export function parseRule(input: unknown): Rule {
  return parseOrThrow(ruleSchema, input, "firewall rule");
}

/** `--peer` text of the CLI: "10.0.0.0/8", "vm:NAME" or "label:k=v". */
export function parsePeerText(text: string): Peer {
  if (text.startsWith("vm:")) return { vm: text.slice(3) };
  if (text.startsWith("label:")) return { label: text.slice(6) };
  if (parseCidr(text)) return { cidr: text };
  throw new VigilError("VIGIL_BAD_REQUEST", `Invalid peer ${q(text)}: use a CIDR ("10.77.0.0/24"), "vm:NAME" or "label:key=value"`, { field: "peer" });
}

/** One line per rule, for `fw show` and audit summaries. */
export function describeRule(r: Rule): string {
  const peer = r.peer === undefined ? "any" : "cidr" in r.peer ? r.peer.cidr : "vm" in r.peer ? `vm:${r.peer.vm}` : `label:${r.peer.label}`;
  const ports = r.ports === undefined ? "" : ` port ${r.ports}`;
  const comment = r.comment ? ` # ${r.comment}` : "";
  return `${r.direction} ${r.action} ${r.proto}${ports} ${r.direction === "in" ? "from" : "to"} ${peer}${comment}`;
}
