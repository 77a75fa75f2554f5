/**
 * A time-boxed mirror of one vNIC's traffic to a pcap file (issue 11 item 5): tcpdump runs inside vigil's netns
 * on the NIC's tap (`-U -w FILE`, unbuffered so what was seen is on disk when it is stopped), bounded by a
 * duration, a packet count (`-c`) and a size (the file is watched and tcpdump stopped when it passes the bound;
 * the file is then trimmed to its last complete record). The file is created 0600 before tcpdump opens it, so a
 * capture — which exposes other VMs' traffic — is never readable by anyone but vigil.
 */
import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync, statSync, truncateSync } from "node:fs";
import { VigilError, q } from "../errors.ts";
import { parsePcap } from "./pcap.ts";
import type { HostNetns } from "./types.ts";

export interface CaptureLimits {
  durationMs: number;
  maxBytes: number;
  maxPackets: number;
}

export interface CaptureResult {
  file: string;
  bytes: number;
  packets: number;
  /** Why it stopped. */
  stoppedBy: "duration" | "bytes" | "packets" | "cancel";
}

export const CAPTURE_BOUNDS = { maxDurationMs: 3_600_000, maxBytes: 1024 * 1024 * 1024, maxPackets: 10_000_000 } as const;

/** Validates capture limits (field names as the CLI/API spell them). */
export function checkLimits(l: CaptureLimits): void {
  if (!Number.isInteger(l.durationMs) || l.durationMs < 100 || l.durationMs > CAPTURE_BOUNDS.maxDurationMs) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot mirror: duration must be 100 ms to 1 h, not ${l.durationMs} ms`, { field: "duration" });
  }
  if (!Number.isInteger(l.maxBytes) || l.maxBytes < 1024 || l.maxBytes > CAPTURE_BOUNDS.maxBytes) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot mirror: maxBytes must be 1024 to ${CAPTURE_BOUNDS.maxBytes}, not ${l.maxBytes}`, { field: "maxBytes" });
  }
  if (!Number.isInteger(l.maxPackets) || l.maxPackets < 1 || l.maxPackets > CAPTURE_BOUNDS.maxPackets) {
    throw new VigilError("VIGIL_BAD_REQUEST", `Cannot mirror: maxPackets must be 1 to ${CAPTURE_BOUNDS.maxPackets}, not ${l.maxPackets}`, { field: "maxPackets" });
  }
}

export interface RunningCapture {
  /** Resolves when tcpdump has started listening on the tap (traffic sent after this is captured). */
  ready: Promise<void>;
  /** Resolves when the capture ended (window over, a bound reached, or cancel()). */
  done: Promise<CaptureResult>;
  cancel(): void;
}

/** Starts a capture of `tap` inside `ns` into `file` (which must not exist). */
export function startCapture(ns: HostNetns, tap: string, file: string, limits: CaptureLimits): RunningCapture {
  checkLimits(limits);
  if (!/^vt-[0-9a-f]{10}$/.test(tap)) throw new VigilError("VIGIL_BAD_REQUEST", `Cannot mirror: ${q(tap)} is not a vigil tap`, { field: "nic" });
  closeSync(openSync(file, "wx", 0o600));
  // -Z root: Debian's tcpdump would otherwise drop to user "tcpdump" and could not write into vigil's 0700 dir.
  const child = spawn("nsenter", [`--net=${ns.path}`, "--", "tcpdump", "-i", tap, "-n", "-U", "-Z", "root", "-c", String(limits.maxPackets), "-w", file], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  let stoppedBy: CaptureResult["stoppedBy"] = "packets";
  let readyResolve!: () => void;
  let readyReject!: (e: Error) => void;
  const ready = new Promise<void>((res, rej) => ((readyResolve = res), (readyReject = rej)));
  child.stderr.on("data", (d: Buffer) => {
    if (stderr.length < 8192) stderr += d.toString();
    if (/listening on/.test(stderr)) readyResolve();
  });
  const stop = (why: CaptureResult["stoppedBy"]) => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    stoppedBy = why;
    child.kill("SIGTERM");
  };
  const timer = setTimeout(() => stop("duration"), limits.durationMs);
  const watch = setInterval(() => {
    try {
      if (statSync(file).size >= limits.maxBytes) stop("bytes");
    } catch {
      /* not there yet */
    }
  }, 100);
  const done = new Promise<CaptureResult>((resolve, reject) => {
    child.on("error", (err) => {
      clearTimeout(timer);
      clearInterval(watch);
      readyReject(err);
      reject(new VigilError("VIGIL_HOST", `Cannot mirror: tcpdump did not start: ${err.message}`, { cause: err }));
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      clearInterval(watch);
      if (code !== 0 && signal === null) {
        const e = new VigilError("VIGIL_HOST", `tcpdump (in ${ns.name}) failed: ${stderr.trim().split("\n").slice(-2).join(" | ")}`);
        readyReject(e);
        return reject(e);
      }
      readyResolve();
      try {
        resolve({ file, ...trimCapture(file, limits.maxBytes), stoppedBy });
      } catch (err) {
        reject(err as Error);
      }
    });
  });
  ready.catch(() => undefined);
  return { ready, done, cancel: () => stop("cancel") };
}

/**
 * Cuts a capture back to whole records within `maxBytes` (tcpdump may have written past the bound, or been
 * stopped mid-record) and counts them.
 */
export function trimCapture(file: string, maxBytes: number): { bytes: number; packets: number } {
  const size = statSync(file).size;
  if (size === 0) return { bytes: 0, packets: 0 };
  const buf = readFileSync(file);
  const pcap = parsePcap(buf, { allowTruncatedTail: true });
  let end = pcap.completeBytes;
  let packets = pcap.packets.length;
  while (end > maxBytes && packets > 0) {
    end = pcap.packets[packets - 1]!.offset;
    packets--;
  }
  if (end !== size) truncateSync(file, end);
  return { bytes: end, packets };
}
