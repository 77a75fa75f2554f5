/**
 * The tamper-evident audit log from the client's side: verify (with a consistency proof checked here), prove and
 * check-proof (the public key alone), export, tail; and `witness serve`, which keeps another site's heads.
 */
import type { Command } from "commander";
import { createWriteStream, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { ApiError, call, events, stream } from "../client.ts";
import { EXIT } from "../exit-codes.ts";
import { plural, printJson } from "../output.ts";
import { positiveInt, writableOutput, type CliContext } from "./common.ts";

/** Adds `audit` and `witness`. */
export function registerAudit(program: Command, ctx: CliContext): void {
  const { hooks } = ctx;
  const audit = program.command("audit").description("The tamper-evident audit log");
  audit
    .command("verify")
    .description("Verify the hash chain, Merkle tree, signed checkpoints and head; names the first bad record. --since proves (consistency proof, checked here) that the log extends an older head")
    .option("--since <file>", "an older head file (audit-head.json, a witness line) or an older export")
    .option("--key <pem>", "with --since: the site's public key from a trusted place (default: the one the daemon reports)")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean; since?: string; key?: string }) => {
      const r = await call<{ ok: boolean; records: number; checkpoints: number; firstBad?: { seq: number; reason: string } }>("GET", "/v1/audit/verify");
      let since: { ok: boolean; message: string } | undefined;
      if (o.since) since = await checkSince(o.since, o.key);
      if (o.json) printJson(since ? { ...r, since } : r);
      else {
        if (r.ok) process.stdout.write(`OK: ${plural(r.records, "record")}, ${plural(r.checkpoints, "signed checkpoint")}, chain intact\n`);
        else process.stdout.write(`TAMPERED: first bad record ${r.firstBad?.seq}: ${r.firstBad?.reason}\n`);
        if (since) process.stdout.write(`${since.ok ? "OK" : "TAMPERED"}: ${since.message}\n`);
      }
      if (!r.ok || (since && !since.ok)) process.exitCode = EXIT.conflict;
    });
  audit
    .command("prove")
    .description("An RFC 9162 inclusion proof that record SEQ is in the tree of the newest signed head; anyone checks it with the public key alone (vigil audit check-proof, scripts/verify-audit-export.mjs --proof)")
    .argument("<seq>", "the record's seq", positiveInt("seq"))
    .option("-o, --output <file>", "write the proof (JSON) to a file")
    .option("--json", "print the proof as JSON")
    .action(async (seq: number, o: { json?: boolean; output?: string }) => {
      const p = await call<{ record: { seq: number; action: string; actor: string }; treeSize: number; path: string[]; head: { rootHash: string; time: string } }>("GET", `/v1/audit/proof/${seq}`);
      if (o.output) writeFileSync(writableOutput("-o", o.output), JSON.stringify(p, null, 2) + "\n", { mode: 0o644 });
      if (o.json) return printJson(p);
      process.stdout.write(`record ${p.record.seq} (${p.record.action} by ${p.record.actor}) is leaf ${p.record.seq - 1} of ${p.treeSize}; audit path of ${plural(p.path.length, "hash", "hashes")}; root ${p.head.rootHash} signed at ${p.head.time}\n`);
    });
  audit
    .command("check-proof")
    .description("Check a proof from `vigil audit prove --json` with the site's public key alone (no daemon needed)")
    .argument("<file>", "the proof (JSON)")
    .requiredOption("--key <pem>", "the site's public key (site-ed25519.pub.pem) from a trusted place")
    .action(async (file: string, o: { key: string }) => {
      const { checkInclusionProof, publicKeyFrom } = await import("../../audit/proof-check.ts");
      const { key, keyId } = publicKeyFrom(readFileSync(o.key, "utf8"));
      let doc: unknown;
      try {
        doc = JSON.parse(readFileSync(file, "utf8"));
      } catch {
        throw new ApiError("VIGIL_BAD_REQUEST", `${JSON.stringify(file)} is not a JSON proof`, 0);
      }
      const r = checkInclusionProof(doc, key, keyId);
      process.stdout.write(`${r.ok ? "OK" : "BAD"}: ${r.message}\n`);
      if (!r.ok) process.exitCode = EXIT.conflict;
    });
  audit
    .command("export")
    .description("Write the log as JSON lines that an outside tool can verify with the site's public key")
    .option("-o, --output <file>", "write to a file instead of stdout")
    .action(async (o: { output?: string }) => {
      if (!o.output) return stream("/v1/audit/export", (chunk) => void process.stdout.write(chunk));
      const path = writableOutput("-o", o.output);
      const file = createWriteStream(path, { mode: 0o600 });
      const failed = new Promise<never>((_, reject) =>
        file.on("error", (err: NodeJS.ErrnoException) => reject(new ApiError("VIGIL_HOST", `Cannot write -o ${JSON.stringify(o.output)}: ${err.code ?? err.message}`, 0, "-o"))),
      );
      await Promise.race([stream("/v1/audit/export", (chunk) => void file.write(chunk)), failed]);
      await Promise.race([new Promise<void>((r) => file.end(r)), failed]);
    });
  audit
    .command("tail")
    .description("The newest records; --follow streams new ones as they happen")
    .option("-n, --lines <n>", "how many", positiveInt("--lines"), 20)
    .option("-f, --follow", "keep streaming")
    .option("--json", "one JSON record per line")
    .action(async (o: { lines: number; follow?: boolean; json?: boolean }) => {
      const show = (r: Record<string, unknown> & { target: { kind: string; name: string | null } }) => {
        if (o.json) process.stdout.write(JSON.stringify(r) + "\n");
        else process.stdout.write(`${String(r.seq).padStart(6)} ${r.time as string} ${String(r.actor).padEnd(10)} ${String(r.action).padEnd(18)} ${String(r.result).padEnd(7)} ${r.target.kind}:${r.target.name ?? "-"} ${JSON.stringify(r.details).slice(0, 100)}\n`);
      };
      const { records } = await call<{ records: Array<Record<string, unknown> & { target: { kind: string; name: string | null } }> }>("GET", `/v1/audit?tail=true&limit=${o.lines}`);
      records.forEach(show);
      if (!o.follow) return;
      let behind: { lastSeq: number | null } | undefined;
      await events("/v1/events", (event, data) => {
        if (event === "audit") show(JSON.parse(data) as never);
        else if (event === "overflow") behind = JSON.parse(data) as { lastSeq: number | null };
      });
      if (behind) {
        // The daemon cut the stream because this terminal read too slowly: say so, never miss records silently.
        process.stderr.write(`vigil: this terminal fell too far behind the audit stream; records after ${behind.lastSeq ?? "the last shown"} were not shown (GET /v1/audit?after=${behind.lastSeq ?? 0})\n`);
        process.exitCode = 1;
      }
    });

  const witness = program.command("witness").description("An audit witness for another site's log");
  witness
    .command("serve")
    .description("Keep a site's signed tree heads (DIR/heads.jsonl, append-only), accepting only heads that extend the last (consistency proof), and co-sign them")
    .requiredOption("--dir <dir>", "where the witnessed heads and the witness key live")
    .requiredOption("--site-key <pem>", "the site's public key (site-ed25519.pub.pem)")
    .option("--listen <addr:port>", "address to listen on", "127.0.0.1:7451")
    .action(async (o: { dir: string; siteKey: string; listen: string }) => {
      mkdirSync(o.dir, { recursive: true, mode: 0o700 });
      const { runWitnessServer } = await hooks.loadDaemon();
      await runWitnessServer({ dir: o.dir, siteKeyPath: o.siteKey, listen: o.listen });
    });
}

/** `audit verify --since`: the consistency proof (or, for a pre-Merkle head, the record) checked here, not by the daemon. */
async function checkSince(file: string, keyFile: string | undefined): Promise<{ ok: boolean; message: string }> {
  const { checkExtends, publicKeyFrom, readOldHead } = await import("../../audit/proof-check.ts");
  let old;
  try {
    old = readOldHead(readFileSync(file, "utf8"));
  } catch (err) {
    throw new ApiError("VIGIL_BAD_REQUEST", `--since ${JSON.stringify(file)}: ${(err as Error).message}`, 0, "since");
  }
  const current = await call<{ head: import("../../audit/chain.ts").TreeHead; publicKey: string }>("GET", "/v1/audit/head");
  const { key, keyId } = publicKeyFrom(keyFile ? readFileSync(keyFile, "utf8") : current.publicKey);
  if (old.kind === "legacy") {
    const { records } = await call<{ records: import("../../audit/chain.ts").HashedRecord[] }>("GET", `/v1/audit?after=${old.head.seq - 1}&limit=1`);
    return checkExtends(old, current.head, key, keyId, { record: records[0] });
  }
  if (old.head.size > current.head.size) return checkExtends(old, current.head, key, keyId, {});
  const proof = await call<{ path: string[]; head: import("../../audit/chain.ts").TreeHead }>("GET", `/v1/audit/consistency?from=${old.head.size}`);
  return checkExtends(old, proof.head, key, keyId, { path: proof.path });
}
