/** `vigil trust`: the keys whose signed bundles this site imports, and the site's own key. */
import type { Command } from "commander";
import { readFileSync } from "node:fs";
import { call, inputFile } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import { enc } from "./common.ts";

/** Adds `trust` and its subcommands. */
export function registerTrust(program: Command): void {
  const trust = program.command("trust").description("Keys whose signed bundles this site imports");
  trust
    .command("add <pem-file>")
    .description("Trust another site's bundle-signing public key (PEM)")
    .requiredOption("--name <name>", "whose key it is")
    .action(async (file: string, o: { name: string }) => {
      inputFile(file, "<pem-file>");
      const k = await call<{ keyId: string }>("POST", "/v1/trust", { name: o.name, publicKey: readFileSync(file, "utf8") });
      process.stdout.write(`Trusting key ${k.keyId} (${o.name})\n`);
    });
  trust
    .command("list")
    .description("List trusted keys (the site's own first)")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { keys } = await call<{ keys: Array<Record<string, unknown>> }>("GET", "/v1/trust");
      if (o.json) return printJson(keys);
      printTable(keys, [
        ["keyId", "KEY ID"],
        ["name", "NAME"],
        ["addedBy", "ADDED BY"],
        ["addedAt", "ADDED"],
      ]);
    });
  trust
    .command("show-site")
    .description("Print this site's public key (give it to sites that import your bundles)")
    .action(async () => {
      const { keys } = await call<{ keys: Array<{ site: boolean; publicKey: string }> }>("GET", "/v1/trust");
      process.stdout.write(keys.find((k) => k.site)?.publicKey ?? "");
    });
  trust
    .command("remove <key-id>")
    .description("Stop trusting a key")
    .action(async (keyId: string) => {
      await call("DELETE", `/v1/trust/${enc(keyId)}`);
      process.stdout.write(`No longer trusting ${keyId}\n`);
    });
}
