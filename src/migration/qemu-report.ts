/**
 * What a host's QEMU can do for a migration (negotiate.ts reads it): version, migration capabilities and
 * parameter names, the TLS object types, machine types and CPU models. The source asks its VM's running QEMU (the
 * one that will send, which may be older than the binary on disk after an upgrade); the target probes its QEMU
 * binary once with `-machine none` (no guest, no devices, no network) and keeps the answer for its life.
 * Everything QEMU answers is shape-checked and bounded before it is used.
 */
import { VigilError, messageOf } from "../errors.ts";
import { QEMU_BINARY } from "../host/qemu-process.ts";
import { runCommand } from "../util/run-command.ts";
import { REQUIRED_OBJECT_TYPES, type QemuReport } from "./negotiate.ts";

type Execute = (command: string, args?: Record<string, unknown>) => Promise<unknown>;

const NAME = /^[A-Za-z0-9_.+-]{1,64}$/;
const names = (xs: unknown[], cap = 1024): string[] => xs.filter((x): x is string => typeof x === "string" && NAME.test(x)).slice(0, cap);
const rec = (v: unknown): Record<string, unknown> => (typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v.slice(0, 4096) : []);

/** QEMU's `query-version` as "MAJOR.MINOR.MICRO" ("unknown" when unreadable: negotiation then refuses). */
export function versionOf(raw: unknown): string {
  const v = rec(rec(raw).qemu);
  const n = [v.major, v.minor, v.micro];
  return n.every((x) => Number.isInteger(x) && (x as number) >= 0 && (x as number) < 10_000) ? n.join(".") : "unknown";
}

/** Reads a report through `exec` (one QMP command at a time). `machines`/`cpus` only when asked. */
export async function readReport(host: string, exec: Execute, what: { machines: boolean; cpus: boolean }): Promise<QemuReport> {
  const version = versionOf(await exec("query-version"));
  const capabilities = names(arr(await exec("query-migrate-capabilities")).map((c) => rec(c).capability));
  const parameters = names(Object.keys(rec(await exec("query-migrate-parameters"))));
  const types = new Set(names(arr(await exec("qom-list-types", {})).map((t) => rec(t).name), 4096));
  const objectTypes = REQUIRED_OBJECT_TYPES.filter((t) => types.has(t));
  const machines = what.machines
    ? names(arr(await exec("query-machines")).flatMap((m) => [rec(m).name, rec(m).alias]))
    : [];
  const cpus = what.cpus
    ? arr(await exec("query-cpu-definitions"))
        .map((c) => rec(c))
        .filter((c) => typeof c.name === "string" && NAME.test(c.name))
        .map((c) => ({ name: c.name as string, migrationSafe: c["migration-safe"] === true }))
        .slice(0, 1024)
    : [];
  return { host, version, capabilities, parameters, objectTypes, machines, cpus };
}

const PROBE_COMMANDS = ["query-version", "query-migrate-capabilities", "query-migrate-parameters", "qom-list-types", "query-machines", "query-cpu-definitions"];

/**
 * Probes the QEMU binary: one `-machine none` QEMU answering the queries on its stdio monitor, then quitting.
 * Test hook (docs/cluster.md "Negotiation"): VIGIL_TEST_HIDE_MIGRATE_CAPABILITIES, a comma-separated list, removes
 * those capability names from the report — QEMU 7.2 cannot be built here without one, and the refusal must be seen
 * end to end.
 */
export async function probeQemu(host: string, binary = QEMU_BINARY): Promise<QemuReport> {
  const input = [{ execute: "qmp_capabilities" }, ...PROBE_COMMANDS.map((execute, id) => ({ execute, id, ...(execute === "qom-list-types" ? { arguments: {} } : {}) })), { execute: "quit" }]
    .map((c) => JSON.stringify(c))
    .join("\n");
  let stdout: string;
  try {
    ({ stdout } = await runCommand(binary, ["-machine", "none", "-nodefaults", "-display", "none", "-S", "-qmp", "stdio"], { input: `${input}\n`, timeoutMs: 30_000, maxOutputBytes: 8 * 1024 * 1024, what: "probing QEMU" }));
  } catch (err) {
    throw new VigilError("VIGIL_HOST", `Cannot ask this host's QEMU what it can do: ${messageOf(err)}`, { cause: err });
  }
  const answers = new Map<number, unknown>();
  for (const line of stdout.split("\n")) {
    let msg: Record<string, unknown>;
    try {
      msg = rec(JSON.parse(line));
    } catch {
      continue;
    }
    if (typeof msg.id === "number" && "return" in msg) answers.set(msg.id, msg.return);
  }
  const report = await readReport(host, async (command) => {
    const id = PROBE_COMMANDS.indexOf(command);
    if (!answers.has(id)) throw new VigilError("VIGIL_HOST", `This host's QEMU did not answer ${command}`);
    return answers.get(id);
  }, { machines: true, cpus: true });
  const hidden = (process.env.VIGIL_TEST_HIDE_MIGRATE_CAPABILITIES ?? "").split(",").filter(Boolean);
  return hidden.length > 0 ? { ...report, capabilities: report.capabilities.filter((c) => !hidden.includes(c)) } : report;
}
