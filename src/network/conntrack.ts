/**
 * Conntrack hand-over (issue 11 item 3): when a VM moves, the established connections the source host's firewall
 * tracked for it are exported there (`conntrack -L -o extended` inside vigil's netns, parsed strictly and bounded)
 * and imported on the target (`conntrack -I`) before the VM runs, so the target's "established only" rules let
 * those connections continue. Best effort, reported: each flow is carried or listed as failed with the reason.
 * TCP and UDP flows are carried; ICMP and other protocols are not (a ping simply starts a new flow).
 */
import { isIP } from "node:net";
import { VigilError, q } from "../errors.ts";
import { inNetns } from "./netns-exec.ts";
import type { HostNetns } from "./types.ts";

export interface FlowTuple {
  src: string;
  dst: string;
  sport?: number;
  dport?: number;
}

export interface FlowEntry {
  family: "ipv4" | "ipv6";
  proto: string;
  protonum: number;
  /** Seconds left before the kernel would expire it. */
  timeout: number;
  /** TCP state (ESTABLISHED, ...), absent for UDP. */
  state?: string;
  original: FlowTuple;
  reply: FlowTuple;
  assured: boolean;
  /** The reply direction was seen (no [UNREPLIED]): without this, the target would treat its packets as "new". */
  replied: boolean;
  mark: number;
  zone?: number;
}

export interface ImportReport {
  carried: number;
  failed: Array<{ flow: FlowEntry; reason: string }>;
}

/** The most flows one export will read: beyond it the table is not a VM's state but a flood, and we refuse. */
export const MAX_FLOWS = 65_536;
const MAX_LINE = 1024;

const TCP_STATES = new Set(["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"]);
const FLAGS = new Set(["[ASSURED]", "[UNREPLIED]", "[OFFLOAD]", "[HW_OFFLOAD]"]);

function bad(lineNo: number, why: string): VigilError {
  return new VigilError("VIGIL_HOST", `Cannot read conntrack output line ${lineNo}: ${why}`);
}

function uint(v: string, lineNo: number, what: string, max: number): number {
  if (!/^[0-9]{1,10}$/.test(v) || Number(v) > max) throw bad(lineNo, `${what} ${q(v)} is not an integer 0-${max}`);
  return Number(v);
}

/** Parses one `conntrack -L -o extended` line. */
export function parseFlowLine(line: string, lineNo = 1): FlowEntry {
  if (line.length > MAX_LINE) throw bad(lineNo, `longer than ${MAX_LINE} characters`);
  const tok = line.trim().split(/\s+/);
  const [fam, famNum, proto, protoNum, timeout] = tok;
  if ((fam !== "ipv4" || famNum !== "2") && (fam !== "ipv6" || famNum !== "10")) throw bad(lineNo, `family ${q(fam)} ${q(famNum)} is not ipv4 2 or ipv6 10`);
  if (proto === undefined || !/^[a-z0-9-]{1,16}$/.test(proto)) throw bad(lineNo, `protocol ${q(proto)} is not a name`);
  const protonum = uint(protoNum ?? "", lineNo, "protocol number", 255);
  const entry: FlowEntry = { family: fam, proto, protonum, timeout: uint(timeout ?? "", lineNo, "timeout", 2 ** 32 - 1), original: { src: "", dst: "" }, reply: { src: "", dst: "" }, assured: false, replied: true, mark: 0 };
  let i = 5;
  if (tok[i] !== undefined && !tok[i]!.includes("=") && !tok[i]!.startsWith("[")) {
    if (!TCP_STATES.has(tok[i]!)) throw bad(lineNo, `state ${q(tok[i])} is not a TCP state`);
    entry.state = tok[i]!;
    i++;
  }
  // Tuples: the first src= opens the original, the second the reply.
  let tuple: FlowTuple | undefined;
  let tuples = 0;
  for (; i < tok.length; i++) {
    const t = tok[i]!;
    if (FLAGS.has(t)) {
      if (t === "[ASSURED]") entry.assured = true;
      if (t === "[UNREPLIED]") entry.replied = false;
      continue;
    }
    const eq = t.indexOf("=");
    if (eq <= 0) throw bad(lineNo, `unexpected token ${q(t)}`);
    const key = t.slice(0, eq);
    const val = t.slice(eq + 1);
    switch (key) {
      case "src":
        tuples++;
        if (tuples > 2) throw bad(lineNo, "more than two tuples");
        tuple = tuples === 1 ? entry.original : entry.reply;
        if (isIP(val) === 0) throw bad(lineNo, `src ${q(val)} is not an IP address`);
        tuple.src = val;
        break;
      case "dst":
        if (!tuple || tuple.dst !== "") throw bad(lineNo, "dst outside a tuple");
        if (isIP(val) === 0) throw bad(lineNo, `dst ${q(val)} is not an IP address`);
        tuple.dst = val;
        break;
      case "sport":
      case "dport":
        if (!tuple || tuple[key] !== undefined) throw bad(lineNo, `${key} outside a tuple`);
        tuple[key] = uint(val, lineNo, key, 65_535);
        break;
      case "type":
      case "code":
      case "id":
        if (!tuple) throw bad(lineNo, `${key} outside a tuple`);
        uint(val, lineNo, key, 65_535);
        break;
      case "mark":
        entry.mark = uint(val, lineNo, "mark", 2 ** 32 - 1);
        break;
      case "zone":
        entry.zone = uint(val, lineNo, "zone", 65_535);
        break;
      case "use":
        uint(val, lineNo, "use", 2 ** 32 - 1);
        break;
      default:
        throw bad(lineNo, `unknown field ${q(key)}`);
    }
  }
  if (tuples !== 2 || entry.original.dst === "" || entry.reply.dst === "") throw bad(lineNo, "an entry needs an original and a reply tuple");
  if ((proto === "tcp" || proto === "udp") && [entry.original.sport, entry.original.dport, entry.reply.sport, entry.reply.dport].some((p) => p === undefined)) {
    throw bad(lineNo, `a ${proto} entry needs ports in both tuples`);
  }
  return entry;
}

/** Parses a whole `conntrack -L -o extended` listing (at most MAX_FLOWS entries). */
export function parseFlows(text: string): FlowEntry[] {
  const out: FlowEntry[] = [];
  const lines = text.split("\n");
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!;
    if (line.trim() === "") continue;
    if (out.length >= MAX_FLOWS) throw new VigilError("VIGIL_HOST", `Cannot export connection state: more than ${MAX_FLOWS} flows`);
    out.push(parseFlowLine(line, n + 1));
  }
  return out;
}

/** The carried protocols' flows that have one of `ips` as an endpoint, from the conntrack table of `ns`. */
export async function exportFlows(ns: HostNetns, ips: readonly string[]): Promise<FlowEntry[]> {
  for (const ip of ips) if (isIP(ip) === 0) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot export connection state: ${q(ip)} is not an IP address`, { field: "ips" });
  const want = new Set(ips);
  const r = await inNetns(ns, "conntrack", ["-L", "-o", "extended"], { timeoutMs: 30_000, what: `conntrack -L (in ${ns.name})` });
  return parseFlows(r.stdout).filter(
    (f) => (f.proto === "tcp" || f.proto === "udp") && [f.original.src, f.original.dst, f.reply.src, f.reply.dst].some((a) => want.has(a)),
  );
}

/** `conntrack -I` arguments re-creating one exported flow. */
export function importArgs(f: FlowEntry): string[] {
  if (f.proto !== "tcp" && f.proto !== "udp") throw new VigilError("VIGIL_BAD_REQUEST", `Cannot import a ${q(f.proto)} flow: only tcp and udp are carried`);
  const o = f.original;
  const r = f.reply;
  const args = ["-I", "-p", f.proto, "-s", o.src, "-d", o.dst, "--sport", String(o.sport), "--dport", String(o.dport)];
  args.push("-r", r.src, "-q", r.dst, "--reply-port-src", String(r.sport), "--reply-port-dst", String(r.dport));
  // At least a few seconds, so a flow about to expire still gets its next packet through.
  args.push("-t", String(Math.max(f.timeout, 10)));
  if (f.mark !== 0) args.push("-m", String(f.mark));
  if (f.state !== undefined && f.proto === "tcp") args.push("--state", f.state);
  // SEEN_REPLY matters most: without it the kernel classifies the flow's packets as "new", and an
  // established-only firewall drops them.
  const status = [...(f.replied ? ["SEEN_REPLY"] : []), ...(f.assured ? ["ASSURED"] : [])];
  if (status.length > 0) args.push("-u", status.join(","));
  if (f.zone !== undefined) args.push("-w", String(f.zone));
  return args;
}

/** Re-creates flows in the conntrack table of `ns`; one failure does not stop the others. */
export async function importFlows(ns: HostNetns, entries: readonly FlowEntry[]): Promise<ImportReport> {
  const report: ImportReport = { carried: 0, failed: [] };
  for (const flow of entries) {
    try {
      await inNetns(ns, "conntrack", importArgs(flow), { timeoutMs: 10_000, what: `conntrack -I (in ${ns.name})` });
      report.carried++;
    } catch (err) {
      report.failed.push({ flow, reason: err instanceof Error ? err.message : String(err) });
    }
  }
  return report;
}
