#!/usr/bin/env node
// The `vigil` command. The CLI is one bundled file (dist/vigil-cli.mjs) because every command starts a fresh
// Node process and module loading is most of its start-up cost; the daemon is loaded only by `vigil serve`.
// Both are built by `npm start` / `npm test` / `npm run build`.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const cli = new URL("../dist/vigil-cli.mjs", import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  process.stderr.write("vigil: not built yet: run `npm run build` (or `npm start`, which sets everything up)\n");
  process.exit(1);
}
const { main } = await import(cli.href);
await main(process.argv, { loadDaemon: () => import(new URL("../dist/daemon/daemon.js", import.meta.url).href) });
