/**
 * The target side of a live migration (docs/cluster.md, "Live migration" steps 3 and 5, and "The migration
 * engine"): pure QMP on a QEMU started with `-incoming defer` (and `-S`, so it stays paused after the switchover
 * until the caller resumes it). The migration listener and the NBD server both speak QEMU's TLS with
 * verify-peer and accept only the certificate whose distinguished name the caller names (authz-simple).
 */
import { VigilError, messageOf, q } from "../errors.ts";
import { parseOrThrow } from "../validation.ts";
import { incomingOptionsSchema, parseMigrateInfo, type Qmp } from "./qmp-info.ts";

export interface IncomingOptions {
  /** Directory holding ca-cert.pem, server-cert.pem and server-key.pem (QEMU reads it). */
  tlsDir: string;
  /** The source certificate's distinguished name exactly as QEMU's TLS session reports it (see docs). */
  authzIdentity: string;
  migrateSocket: string;
  nbdSocket: string;
  /** Each disk's block node on the target, exported writable under `exportName`. */
  disks: { node: string; exportName: string }[];
}

const TLS_ID = "vigil-mig-tls";
const AUTHZ_ID = "vigil-mig-authz";
const COMMAND_TIMEOUT_MS = 10_000;

/**
 * Makes the target QEMU listen: credentials (server, verify-peer), the source's identity, the migration
 * listener, the NBD server and one writable export per disk. On failure, what was added is removed again (the
 * migration listener cannot be withdrawn: the caller kills this QEMU, as a failed migration does anyway).
 */
export async function prepareIncoming(qmp: Qmp, options: IncomingOptions): Promise<void> {
  const opts = parseOrThrow(incomingOptionsSchema, options, "incoming migration options");
  const run = (command: string, args?: Record<string, unknown>) => qmp.execute(command, args, { timeoutMs: COMMAND_TIMEOUT_MS });
  const undo: { what: string; fn: () => Promise<unknown> }[] = [];
  let step = "add the TLS credentials";
  try {
    await run("object-add", { "qom-type": "tls-creds-x509", id: TLS_ID, dir: opts.tlsDir, endpoint: "server", "verify-peer": true });
    undo.push({ what: "object-del creds", fn: () => run("object-del", { id: TLS_ID }) });
    step = "add the source's identity";
    await run("object-add", { "qom-type": "authz-simple", id: AUTHZ_ID, identity: opts.authzIdentity });
    undo.push({ what: "object-del authz", fn: () => run("object-del", { id: AUTHZ_ID }) });
    step = "set the migration capabilities";
    // return-path must be on at both ends (see precopy.ts).
    await run("migrate-set-capabilities", { capabilities: [{ capability: "events", state: true }, { capability: "return-path", state: true }] });
    step = "set the migration parameters";
    await run("migrate-set-parameters", { "tls-creds": TLS_ID, "tls-authz": AUTHZ_ID });
    step = "listen for the migration";
    await run("migrate-incoming", { uri: `unix:${opts.migrateSocket}` });
    step = "start the NBD server";
    await run("nbd-server-start", { addr: { type: "unix", data: { path: opts.nbdSocket } }, "tls-creds": TLS_ID, "tls-authz": AUTHZ_ID });
    // nbd-server-stop also removes every NBD export, so the exports need no undo of their own.
    undo.push({ what: "nbd-server-stop", fn: () => run("nbd-server-stop") });
    for (const [i, disk] of opts.disks.entries()) {
      step = `export disk ${q(disk.node)}`;
      await run("block-export-add", { type: "nbd", id: `vigil-mig-export${i}`, "node-name": disk.node, name: disk.exportName, writable: true });
    }
  } catch (err) {
    const problems: string[] = [];
    for (const u of undo.reverse()) {
      await u.fn().catch((e: unknown) => problems.push(`${u.what}: ${messageOf(e)}`));
    }
    const cleanup = problems.length > 0 ? ` (clean-up: ${problems.join("; ")})` : "";
    const code = err instanceof VigilError ? err.code : "VIGIL_QEMU";
    throw new VigilError(code, `Cannot prepare the incoming migration at step ${q(step)}: ${messageOf(err)}${cleanup}`, { cause: err });
  }
}

/**
 * Resolves once the target QEMU reports the migration completed; rejects when it reports it failed, when the
 * signal aborts, after `timeoutMs`, or when QEMU goes away (an incoming migration that fails to load makes QEMU
 * exit).
 */
export async function watchIncoming(qmp: Qmp, signal?: AbortSignal, options: { timeoutMs?: number; pollMs?: number } = {}): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 24 * 3600_000);
  const pollMs = options.pollMs ?? 100;
  for (;;) {
    if (signal?.aborted) throw new VigilError("VIGIL_CONFLICT", "Stopped watching the incoming migration: cancelled");
    if (Date.now() > deadline) throw new VigilError("VIGIL_TIMEOUT", "The incoming migration did not complete in time");
    let raw: unknown;
    try {
      raw = await qmp.execute("query-migrate", undefined, { timeoutMs: COMMAND_TIMEOUT_MS });
    } catch (err) {
      throw new VigilError("VIGIL_QEMU", `The incoming migration failed: ${messageOf(err)}`, { cause: err });
    }
    const info = parseMigrateInfo(raw);
    if (info.status === "completed") return;
    if (info.status === "failed" || info.status === "cancelled") {
      throw new VigilError("VIGIL_QEMU", `The incoming migration failed: ${info.error ?? info.status}`);
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, pollMs);
      function done() {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        resolve();
      }
      signal?.addEventListener("abort", done, { once: true });
    });
  }
}

/**
 * After `completed`: stops the NBD server (its exports go with it, and the guest's devices take their normal
 * block permissions back), resumes the VM, then removes the migration's credentials and identity. Refuses unless
 * QEMU reports the migration completed.
 */
export async function finishIncoming(qmp: Qmp): Promise<void> {
  const run = (command: string, args?: Record<string, unknown>) => qmp.execute(command, args, { timeoutMs: COMMAND_TIMEOUT_MS });
  const info = parseMigrateInfo(await run("query-migrate"));
  if (info.status !== "completed") {
    throw new VigilError("VIGIL_INVALID_STATE", `Cannot resume the migrated VM: the incoming migration is ${info.status}, not completed`);
  }
  try {
    await run("nbd-server-stop");
  } catch (err) {
    throw new VigilError("VIGIL_QEMU", `Cannot stop the migration's NBD server: ${messageOf(err)}`, { cause: err });
  }
  await run("cont");
  // The migration's credentials are spent: drop them, so this VM can later migrate on with fresh ones.
  await run("migrate-set-parameters", { "tls-creds": "", "tls-authz": "" });
  await run("object-del", { id: AUTHZ_ID });
  await run("object-del", { id: TLS_ID });
}
