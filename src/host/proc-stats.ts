/**
 * What the kernel says about a process and the host, from /proc: a QEMU's CPU time and resident memory, the host's
 * memory and load. Parsers take the text (bounded, strict: a field that is not a number is an error, never a wrong
 * number) so they are tested on fixed inputs and on a real process alike.
 */
import { readFile } from "node:fs/promises";
import { VigilError, q } from "../errors.ts";

/** USER_HZ: the unit of /proc/PID/stat's times; 100 on every Linux architecture vigil runs on. */
export const CLK_TCK = 100;

/** /proc files are small; anything longer is not what we expect. */
const MAX_TEXT = 64 * 1024;

export interface ProcessStats {
  /** utime + stime, in seconds. */
  cpuSeconds: number;
  /** VmRSS, in bytes. */
  rssBytes: number;
}

export interface HostStats {
  memTotalBytes: number;
  memAvailableBytes: number;
  load1: number;
}

function bad(what: string, detail: string): VigilError {
  return new VigilError("VIGIL_HOST", `Cannot read ${what}: ${detail}`);
}

/**
 * utime + stime from /proc/PID/stat, in seconds. The command name (field 2) is in parentheses and may itself hold
 * spaces and parentheses, so fields are counted from the last ")".
 */
export function parseProcStatCpuSeconds(text: string): number {
  if (text.length > MAX_TEXT) throw bad("/proc/PID/stat", `${text.length} bytes`);
  const end = text.lastIndexOf(")");
  if (end < 0) throw bad("/proc/PID/stat", "no command name");
  // After ")": state(3) ppid(4) … utime(14) stime(15): index 0 is field 3.
  const fields = text.slice(end + 1).trim().split(/\s+/);
  const utime = fields[11];
  const stime = fields[12];
  if (utime === undefined || stime === undefined || !/^\d{1,20}$/.test(utime) || !/^\d{1,20}$/.test(stime)) throw bad("/proc/PID/stat", `utime ${q(utime)} stime ${q(stime)}`);
  return (Number(utime) + Number(stime)) / CLK_TCK;
}

/** A "Key:   N kB" line of /proc/PID/status or /proc/meminfo, in bytes; undefined when the key is absent. */
function kbLine(text: string, key: string, what: string): number | undefined {
  if (text.length > MAX_TEXT) throw bad(what, `${text.length} bytes`);
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${key}:`)) continue;
    const m = /^\S+:\s+(\d{1,20})\s+kB$/.exec(line.trim());
    if (!m) throw bad(what, `${key} is ${q(line.slice(0, 80))}`);
    return Number(m[1]) * 1024;
  }
  return undefined;
}

/** VmRSS of /proc/PID/status in bytes (0 for a process with no user memory, e.g. a zombie, which has no VmRSS line). */
export function parseStatusRssBytes(text: string): number {
  return kbLine(text, "VmRSS", "/proc/PID/status") ?? 0;
}

/** MemTotal and MemAvailable of /proc/meminfo, in bytes. */
export function parseMeminfo(text: string): { memTotalBytes: number; memAvailableBytes: number } {
  const total = kbLine(text, "MemTotal", "/proc/meminfo");
  const avail = kbLine(text, "MemAvailable", "/proc/meminfo");
  if (total === undefined || avail === undefined) throw bad("/proc/meminfo", "MemTotal or MemAvailable is missing");
  return { memTotalBytes: total, memAvailableBytes: avail };
}

/** The 1-minute load average of /proc/loadavg. */
export function parseLoad1(text: string): number {
  const m = /^(\d{1,6}\.\d{1,3}) /.exec(text.slice(0, 256));
  if (!m) throw bad("/proc/loadavg", q(text.slice(0, 40)));
  return Number(m[1]);
}

/** CPU seconds and RSS of process `pid`. */
export async function readProcessStats(pid: number, procRoot = "/proc"): Promise<ProcessStats> {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw bad("process stats", `pid ${q(pid)}`);
  const [stat, status] = await Promise.all([readFile(`${procRoot}/${pid}/stat`, "utf8"), readFile(`${procRoot}/${pid}/status`, "utf8")]);
  return { cpuSeconds: parseProcStatCpuSeconds(stat), rssBytes: parseStatusRssBytes(status) };
}

/** The host's memory and load. */
export async function readHostStats(procRoot = "/proc"): Promise<HostStats> {
  const [meminfo, loadavg] = await Promise.all([readFile(`${procRoot}/meminfo`, "utf8"), readFile(`${procRoot}/loadavg`, "utf8")]);
  return { ...parseMeminfo(meminfo), load1: parseLoad1(loadavg) };
}
