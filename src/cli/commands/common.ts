/**
 * What every command module shares, one way each: the VM shape the commands print, API paths, option parsers
 * (whole numbers, repeatable and KEY=VALUE options), the output-file check, progress for long requests, and the
 * context a registrar gets. The HTTP client is `../client.ts`, printing is `../output.ts`.
 */
import type { Command } from "commander";
import { accessSync, constants as fsConstants, existsSync, statSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { dirname, resolve as resolvePath } from "node:path";
import { ApiError, events } from "../client.ts";
import { clearLine, progressLine, withSpinner } from "../output.ts";

export type Vm = Record<string, unknown> & { name: string; state: string; spec: { vcpus: number; memoryMiB: number; image: string | null; agent?: boolean } };

export const enc = encodeURIComponent;
export const vmPath = (name: string, suffix = "") => `/v1/vms/${enc(name)}${suffix}`;

/** Commander's collector for a repeatable option: every value given, in order. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** A parser for a whole-number option; anything else is a usage error naming `flag`. */
export function positiveInt(flag: string) {
  return (v: string) => {
    if (!/^\d+$/.test(v)) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid ${flag} ${JSON.stringify(v)}: must be a whole number`, 0, flag);
    return Number(v);
  };
}

/**
 * The values of a repeatable KEY=VALUE option (`--label`, `--set`) as an object; a value without a key before its
 * `=` is a usage error naming `--flag` and the form (`placeholder`, e.g. "KEY=VALUE").
 */
export function keyValues(flag: string, values: string[], placeholder: string): Record<string, string> {
  return Object.fromEntries(
    values.map((kv) => {
      const i = kv.indexOf("=");
      if (i <= 0) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid --${flag} ${JSON.stringify(kv)}: use ${placeholder}`, 0, flag);
      return [kv.slice(0, i), kv.slice(i + 1)];
    }),
  );
}

/**
 * Checks before any request is sent that `path` (given with `flag`) can be created: its directory exists and is
 * writable, and the path itself is not a directory. Returns the absolute path.
 */
export function writableOutput(flag: string, path: string): string {
  const abs = resolvePath(path);
  const dir = dirname(abs);
  const refuse = (why: string) => new ApiError("VIGIL_BAD_REQUEST", `Cannot write ${flag} ${JSON.stringify(path)}: ${why}`, 0, flag);
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw refuse(`the directory ${JSON.stringify(dir)} does not exist`);
  }
  if (!st.isDirectory()) throw refuse(`${JSON.stringify(dir)} is not a directory`);
  try {
    accessSync(dir, fsConstants.W_OK);
  } catch {
    throw refuse(`the directory ${JSON.stringify(dir)} is not writable`);
  }
  if (existsSync(abs) && statSync(abs).isDirectory()) throw refuse("it is a directory");
  return abs;
}

/**
 * Runs a long request under a fresh request id and, on a terminal, draws the progress the daemon reports for
 * it on the events stream (snapshot jobs, copies, compression).
 */
export async function withProgress<T>(label: string, work: (requestId: string) => Promise<T>): Promise<T> {
  const requestId = randomUUID();
  if (!process.stderr.isTTY) return work(requestId);
  const done = new AbortController();
  const follow = events(`/v1/events?progress=${requestId}`, (event, data) => {
    if (event !== "progress" || done.signal.aborted) return;
    const p = JSON.parse(data) as { what: string; current: number; total: number };
    progressLine(`${label} (${p.what})`, p.current, p.total);
  }, undefined, done.signal).catch(() => undefined);
  try {
    return await withSpinner(label, work(requestId));
  } finally {
    // Close the progress stream: left open it would keep the command running after its work is done.
    done.abort();
    await follow;
    clearLine();
  }
}

/** What the CLI needs from outside its bundle: the daemon is loaded only by `vigil serve`. */
export interface CliHooks {
  loadDaemon: () => Promise<{ runDaemon(options: { listen: string; tls?: "auto" | "off" | { cert: string; key: string } | undefined; cluster?: { listen: string; credentialsDir: string } }): Promise<void>; runClusterManager(options: { db: string; listen?: string; tls?: "auto" | "off" | { cert: string; key: string } | undefined }): Promise<void>; runWitnessServer(options: { dir: string; siteKeyPath: string; listen: string }): Promise<void> }>;
}

/** What a command registrar may use besides the program it adds to. */
export interface CliContext {
  hooks: CliHooks;
}

/** Adds one group of commands to the program (see ../main.ts for the order, which is the help's order). */
export type Registrar = (program: Command, ctx: CliContext) => void;
