/**
 * `vigil ca init` and `vigil ca show`: the cluster's certificate authority, on this machine's
 * $VIGIL_HOME/keys/ca (docs/cluster.md). Local commands, no daemon: the CA key never goes through an API, and
 * the manager reads it from that directory. The CA module is loaded only when one of these runs.
 */
import type { Command } from "commander";
import { X509Certificate } from "node:crypto";
import { homeLayout, vigilHome } from "../../paths.ts";
import { printJson } from "../output.ts";

const keysDir = () => homeLayout(vigilHome()).keysDir;

/** What `ca show` prints about one certificate. */
function describe(pem: string) {
  const c = new X509Certificate(pem);
  return { subject: c.subject.replace(/\n/g, ", "), fingerprint: c.fingerprint256, serial: c.serialNumber, notBefore: new Date(c.validFrom).toISOString(), notAfter: new Date(c.validTo).toISOString() };
}

/** Adds `ca init` and `ca show`. */
export function registerCa(program: Command): void {
  const ca = program.command("ca").description("The cluster's certificate authority in VIGIL_HOME/keys/ca (local; no daemon needed)");

  ca.command("init")
    .description("Make the CA (P-256, 10 years) and the manager's client certificate")
    .option("--force", "replace an existing CA (every certificate it issued stops being trusted)")
    .option("--json", "machine-readable output")
    .action(async (o: { force?: boolean; json?: boolean }) => {
      const { caDir, initCa } = await import("../../cluster/ca.ts");
      const dir = caDir(keysDir());
      const made = await initCa(dir, { force: o.force === true });
      const view = { dir, ca: describe(made.certPem), manager: describe(made.manager.certPem) };
      if (o.json) return printJson(view);
      process.stdout.write(`Made the vigil CA in ${dir}\n${"fingerprint".padEnd(12)} ${view.ca.fingerprint}\n${"expires".padEnd(12)} ${view.ca.notAfter}\n${"manager".padEnd(12)} ${view.manager.subject} (expires ${view.manager.notAfter})\n`);
    });

  ca.command("show")
    .description("The CA's subject, fingerprint and expiry, and the manager's certificate")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { caDir, loadCa } = await import("../../cluster/ca.ts");
      const dir = caDir(keysDir());
      const loaded = loadCa(dir);
      const view = { dir, ca: describe(loaded.certPem), manager: describe(loaded.manager.certPem) };
      if (o.json) return printJson(view);
      for (const [label, c] of [["ca", view.ca], ["manager", view.manager]] as const) {
        process.stdout.write(`${label}\n  ${"subject".padEnd(12)} ${c.subject}\n  ${"fingerprint".padEnd(12)} ${c.fingerprint}\n  ${"serial".padEnd(12)} ${c.serial}\n  ${"valid".padEnd(12)} ${c.notBefore} – ${c.notAfter}\n`);
      }
      process.stdout.write(`${"dir".padEnd(14)} ${dir}\n`);
    });
}
