#!/usr/bin/env node
// The `vigil` command. Runs the compiled CLI from dist/ (built by `npm start` / `npm test` / `npm run build`).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const entry = new URL("../dist/cli/main.js", import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write("vigil: not built yet: run `npm run build` (or `npm start`, which sets everything up)\n");
  process.exit(1);
}
const { main } = await import(entry.href);
await main(process.argv);
