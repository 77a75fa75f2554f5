/**
 * Who you are and who may do what: `whoami`, `login`/`logout` (the stored URL and token), and the admin commands
 * for users, their tokens and groups.
 */
import type { Command } from "commander";
import { chmodSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { ApiError, call, clientConfigPath, daemonUrl, fetchServerCert } from "../client.ts";
import { printJson, printTable } from "../output.ts";
import { collect, enc } from "./common.ts";

/** Adds `whoami`, `login` and `logout`. */
export function registerSession(program: Command): void {
  program
    .command("whoami")
    .description("Who the daemon thinks you are")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const me = await call<{ name: string; roles: string[]; introspect: boolean; groups: string[]; via: string }>("GET", "/v1/whoami");
      if (o.json) return printJson(me);
      // The introspect grant is not a role (no role implies it): its own field, yes or no.
      process.stdout.write(`${me.name} (roles: ${me.roles.join(", ") || "none"}; introspect: ${me.introspect ? "yes" : "no"}; groups: ${me.groups.join(", ") || "none"}; via ${me.via})\n`);
    });

  program
    .command("login")
    .description("Store the daemon URL and a token (read from stdin or VIGIL_TOKEN, never from the command line) in ~/.config/vigil/config.json (0600)")
    .requiredOption("--url <url>", "daemon URL, e.g. https://vigil.example:7450 (http only for loopback)")
    .option("--fingerprint <sha256>", "for https: the certificate fingerprint `vigil serve` logged (otherwise trusted on first use)")
    .action(async (o: { url: string; fingerprint?: string }) => {
      const url = daemonUrl(o.url, "--url");
      const token = await readSecretFromStdin("Token: ");
      if (!token) throw new ApiError("VIGIL_BAD_REQUEST", "No token given: pipe it on stdin or set VIGIL_TOKEN", 0, "token");
      // https: pin the certificate before the token is sent anywhere; the token then goes only to this URL.
      const pin = url.protocol === "https:" ? await fetchServerCert(url) : undefined;
      if (pin && o.fingerprint && pin.fingerprint.toUpperCase() !== o.fingerprint.toUpperCase()) {
        throw new ApiError("VIGIL_FORBIDDEN", `The daemon at ${url.href} presented certificate ${pin.fingerprint}, not ${o.fingerprint}: not logging in`, 0, "fingerprint");
      }
      const me = await call<{ name: string }>("GET", "/v1/whoami", undefined, { url, token, ...(pin ? { pin } : {}) });
      const path = clientConfigPath();
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      writeFileSync(path, JSON.stringify({ url: url.href, token, ...(pin ?? {}) }, null, 2) + "\n", { mode: 0o600 });
      chmodSync(path, 0o600); // the mode option applies only to a file that did not exist
      process.stdout.write(`Logged in to ${url.href} as ${me.name}${pin ? ` (certificate ${pin.fingerprint} pinned)` : ""}\n`);
    });

  program
    .command("logout")
    .description("Forget the stored URL and token")
    .action(() => {
      rmSync(clientConfigPath(), { force: true });
    });
}

/** Adds `user`, `token` and `group`. */
export function registerUsers(program: Command): void {
  const user = program.command("user").description("Users, roles and tokens");
  user
    .command("add <name>")
    .description("Add a user; prints its first token once")
    .option("--role <role>", "admin | operator | owner | auditor (repeatable)", collect)
    .option("--introspect", "may read guest memory (never implied by a role)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { role?: string[]; introspect?: boolean; json?: boolean }) => {
      const r = await call<{ user: Record<string, unknown>; token: string }>("POST", "/v1/users", { name, roles: o.role ?? [], introspect: o.introspect ?? false });
      if (o.json) return printJson(r);
      process.stdout.write(`Added user ${name}. Token (shown once, store it now):\n${r.token}\n`);
    });
  user
    .command("list")
    .description("List users")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { users } = await call<{ users: Array<Record<string, unknown>> }>("GET", "/v1/users");
      if (o.json) return printJson(users);
      printTable(
        users.map((u) => ({ ...u, roles: (u.roles as string[]).join(","), groups: (u.groups as string[]).join(",") })),
        [
          ["name", "NAME"],
          ["roles", "ROLES"],
          ["introspect", "INTROSPECT"],
          ["disabled", "DISABLED"],
          ["groups", "GROUPS"],
          ["createdAt", "CREATED"],
        ],
      );
    });
  user
    .command("token <name>")
    .description("Issue a new token for a user (shown once), or --revoke all of them")
    .option("--label <label>", "a name for the token", "cli")
    .option("--expires <iso>", "expiry time (ISO 8601)")
    .option("--revoke", "revoke every token of the user instead")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { label: string; expires?: string; revoke?: boolean; json?: boolean }) => {
      if (o.revoke) {
        const r = await call<{ revoked: number }>("DELETE", `/v1/users/${enc(name)}/tokens`);
        if (o.json) return printJson(r);
        process.stdout.write(`Revoked ${r.revoked} token(s) of ${name}\n`);
        return;
      }
      const r = await call<{ token: string }>("POST", `/v1/users/${enc(name)}/tokens`, { name: o.label, ...(o.expires ? { expiresAt: o.expires } : {}) });
      if (o.json) return printJson(r);
      process.stdout.write(`${r.token}\n`);
    });
  const tokenCmd = program.command("token").description("Your API tokens (or another user's with --user)");
  const tokenOwner = async (o: { user?: string }) => o.user ?? (await call<{ name: string }>("GET", "/v1/whoami")).name;
  tokenCmd
    .command("list")
    .description("List tokens: id, label, expiry, last use, revoked, the token each was minted with (never the secret)")
    .option("--user <name>", "another user's tokens (needs user.read)")
    .option("--json", "machine-readable output")
    .action(async (o: { user?: string; json?: boolean }) => {
      const { tokens } = await call<{ tokens: Array<Record<string, unknown>> }>("GET", `/v1/users/${enc(await tokenOwner(o))}/tokens`);
      if (o.json) return printJson(tokens);
      printTable(tokens.map((t) => ({ ...t, expiresAt: t.expiresAt ?? "never", lastUsedAt: t.lastUsedAt ?? "-", parentId: t.parentId ?? "-" })), [
        ["id", "ID"],
        ["name", "LABEL"],
        ["createdAt", "CREATED"],
        ["expiresAt", "EXPIRES"],
        ["lastUsedAt", "LAST USED"],
        ["revoked", "REVOKED"],
        ["parentId", "MINTED WITH"],
      ]);
    });
  tokenCmd
    .command("revoke <id>")
    .description("Revoke one token and every token minted with it")
    .option("--user <name>", "another user's token (needs user.manage)")
    .option("--json", "machine-readable output")
    .action(async (id: string, o: { user?: string; json?: boolean }) => {
      const r = await call<{ revoked: number }>("DELETE", `/v1/users/${enc(await tokenOwner(o))}/tokens/${enc(id)}`);
      if (o.json) return printJson(r);
      process.stdout.write(`Revoked ${r.revoked} token(s)\n`);
    });
  user
    .command("set <name>")
    .description("Change a user's roles, introspection grant or disabled flag")
    .option("--role <role>", "replace the roles (repeatable)", collect)
    .option("--introspect", "grant introspection")
    .option("--no-introspect", "revoke introspection")
    .option("--disable", "disable the user")
    .option("--enable", "enable the user")
    .option("--quota <key=value>", "quota for VMs the user owns, replacing the site default: vms=N, memoryMiB=N or diskMiB=N (repeatable; replaces every override)", collect)
    .option("--default-quotas", "drop the user's quota overrides (the site defaults apply)")
    .option("--json", "machine-readable output")
    .action(async (name: string, o: { role?: string[]; introspect?: boolean; disable?: boolean; enable?: boolean; quota?: string[]; defaultQuotas?: boolean; json?: boolean }) => {
      const change: Record<string, unknown> = {};
      if (o.role) change.roles = o.role;
      if (o.defaultQuotas) change.quotas = null;
      if (o.quota) {
        const quotas: Record<string, number> = {};
        for (const kv of o.quota) {
          const m = /^(vms|memoryMiB|diskMiB)=(\d{1,10})$/.exec(kv);
          if (!m) throw new ApiError("VIGIL_BAD_REQUEST", `Invalid --quota ${JSON.stringify(kv)}: use vms=N, memoryMiB=N or diskMiB=N`, 0, "quota");
          quotas[m[1]!] = Number(m[2]);
        }
        change.quotas = quotas;
      }
      if (o.introspect !== undefined) change.introspect = o.introspect;
      if (o.disable) change.disabled = true;
      if (o.enable) change.disabled = false;
      if (Object.keys(change).length === 0) {
        throw new ApiError("VIGIL_BAD_REQUEST", `Nothing to change for user ${JSON.stringify(name)}: give --role, --introspect, --no-introspect, --disable or --enable`, 0, "user");
      }
      const r = await call<Record<string, unknown>>("PATCH", `/v1/users/${enc(name)}`, change);
      if (o.json) return printJson(r);
      process.stdout.write(`User ${name} updated\n`);
    });

  const group = program.command("group").description("Groups (VMs can be owned by a group)");
  group
    .command("add <name>")
    .description("Add a group")
    .action(async (name: string) => {
      await call("POST", "/v1/groups", { name });
      process.stdout.write(`Added group ${name}\n`);
    });
  group
    .command("list")
    .description("List groups and members")
    .option("--json", "machine-readable output")
    .action(async (o: { json?: boolean }) => {
      const { groups } = await call<{ groups: Array<{ name: string; members: string[] }> }>("GET", "/v1/groups");
      if (o.json) return printJson(groups);
      printTable(groups.map((g) => ({ name: g.name, members: g.members.join(",") })), [
        ["name", "NAME"],
        ["members", "MEMBERS"],
      ]);
    });
  for (const [cmd, method, verb] of [
    ["add-member", "PUT", "added to"],
    ["remove-member", "DELETE", "removed from"],
  ] as const) {
    group
      .command(`${cmd} <group> <user>`)
      .description(`${cmd === "add-member" ? "Add a user to" : "Remove a user from"} a group`)
      .action(async (g: string, u: string) => {
        await call(method, `/v1/groups/${enc(g)}/members/${enc(u)}`);
        process.stdout.write(`${u} ${verb} ${g}\n`);
      });
  }
}

/** The token for `login`: VIGIL_TOKEN, else the first line on stdin (prompted on a terminal), never an argument. */
async function readSecretFromStdin(prompt: string): Promise<string> {
  if (process.env.VIGIL_TOKEN) return process.env.VIGIL_TOKEN;
  if (process.stdin.isTTY) process.stderr.write(prompt);
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk as Buffer);
    if (Buffer.concat(chunks).includes(0x0a)) break;
  }
  return Buffer.concat(chunks).toString("utf8").split("\n")[0]!.trim();
}
