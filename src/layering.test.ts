/**
 * Layering, enforced (after VS Code's "Bad layering" check): dependencies point inward — cli/api/daemon →
 * capabilities → vm/auth/audit → inventory/qemu/host. Every non-type import between top-level folders of src/
 * must be allowed by the table below; a new folder or a new edge needs a decision written here.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative, dirname, resolve } from "node:path";

const SRC = import.meta.dirname;

/** Folder → folders it may import values from (type-only imports are free: they vanish at build). */
const ALLOWED: Record<string, string[]> = {
  cli: ["audit", "cluster"], // a thin client: its own folder, paths.ts, (loaded lazily) the pure audit proof checkers, the CA files and placement reports
  daemon: ["api", "audit", "auth", "cluster", "host", "image", "introspection", "inventory", "metrics", "migration", "network", "posture", "provenance", "qemu", "recording", "storage", "util", "vm", "vtime"],
  api: ["auth", "cluster", "guest-agent", "introspection", "metrics", "migration", "network", "posture", "provenance", "storage", "vm", "vtime"],
  // the numbers of /metrics and the console's graphs: permissions (auth), /proc readers (host), the VM states (vm);
  // VMs, their QMP and the switch's counters come in through the services it is handed (type imports)
  metrics: ["auth", "host", "vm"],
  introspection: ["auth", "guest-agent", "host", "image", "qemu", "storage", "util", "vm"],
  storage: ["audit", "auth", "host", "qemu", "util", "vm"],
  vtime: ["qemu"],
  network: ["auth", "host", "util", "vm"], // the switch: vm for the state rule of which taps stay, host for private dirs
  provenance: ["host"],
  vm: ["auth", "host", "inventory", "qemu", "util"], // inventory: the dialect helper (the shared VM list is SQLite's only)
  auth: [],
  audit: ["inventory", "util"], // inventory: the dialect helpers (one JSON parameter for many ids on either database)
  image: ["auth", "host", "qemu", "storage", "util"],
  host: ["guest-agent", "qemu", "util"],
  "guest-agent": ["qemu"],
  qemu: ["util"],
  // moving a VM between hosts: its dossier gathers what the capabilities keep per VM (policy, watch, store), its
  // disks go through qemu-img; the QMP pre-copy engine, the relays, the agent's side and the manager's orchestrator
  migration: ["auth", "cluster", "host", "introspection", "network", "posture", "provenance", "qemu", "storage", "util", "vm", "vtime"],
  cluster: ["audit", "auth", "inventory", "util"], // the CA (openssl via util), mutual TLS, the agent client, hosts, pure plans (placement, leases)
  // transience (docs/transience.md): posture, the gate (through the firewall service it is handed), signature scans
  posture: ["auth", "guestfs", "storage", "util", "vm"], // and the pure package-data parsers; offline scans read disks through storage (chain) and guestfs
  // record/replay (docs/recording.md): recordings start VMs through vm, replicas run in host's jail, bisect runs the
  // introspection checks on a replica's RAM, export writes storage's tar
  recording: ["auth", "host", "introspection", "provenance", "qemu", "storage", "util", "vm"],
  inventory: [],
  guestfs: [], // readers of dormant disks over storage's BlockReader (a type import: free): partition tables, ext2/3/4
  util: [],
};
/** Files at the top of src/ anyone may use. */
const SHARED = new Set(["errors.ts", "validation.ts", "log.ts", "paths.ts", "config.ts"]);

function* files(dir: string): Generator<string> {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* files(p);
    else if (e.name.endsWith(".ts") && !e.name.endsWith(".test.ts")) yield p;
  }
}

/**
 * The relative modules a file takes values from: `import … from`, `export … from` (a re-export is a dependency
 * too) and dynamic `import("…")`. Type-only forms are left out: `import type`, `export type … from`, and the
 * type reference `import("…").Name` (a dynamic import is awaited or `.then`-ed, never dotted into a name).
 */
export function valueImports(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/^\s*(?:import|export)\s+(type\s+)?[^;]*?from\s+"(\.[^"]+)"/gms)) {
    if (!m[1]) out.push(m[2]!);
  }
  for (const m of text.matchAll(/\bimport\(\s*"(\.[^"]+)"\s*\)(\s*\.\s*[A-Za-z_$][\w$]*)?/g)) {
    if (!m[2] || /\.\s*then$/.test(m[2])) out.push(m[1]!);
  }
  return out;
}

test("the import scanner sees re-exports and dynamic imports, and skips type-only forms", () => {
  const text = [
    'import { a } from "./a.ts";',
    'import type { B } from "./b.ts";',
    'export { c } from "./c.ts";',
    'export * from "./d.ts";',
    'export type { E } from "./e.ts";',
    'const f = await import("./f.ts");',
    'void import("./g.ts").then((m) => m);',
    'let h: import("./h.ts").H;',
    'import {\n  i,\n  j,\n} from "./i.ts";',
  ].join("\n");
  assert.deepEqual(valueImports(text).sort(), ["./a.ts", "./c.ts", "./d.ts", "./f.ts", "./g.ts", "./i.ts"]);
});

test("imports between folders follow the layering", () => {
  const bad: string[] = [];
  for (const file of files(SRC)) {
    const rel = relative(SRC, file);
    const from = rel.split("/")[0]!;
    if (!rel.includes("/")) continue;
    if (rel.includes("/testing/")) continue; // test support may reach anywhere
    const text = readFileSync(file, "utf8");
    for (const spec of valueImports(text)) {
      const target = relative(SRC, resolve(dirname(file), spec));
      const to = target.split("/")[0]!;
      if (to === from || SHARED.has(target)) continue;
      if (from === "cli" && target === "paths.ts") continue;
      if (!(ALLOWED[from] ?? []).includes(to)) bad.push(`${rel} imports ${target} (${from} → ${to})`);
    }
  }
  assert.deepEqual(bad, [], "Bad layering. You are not allowed to access these from here");
});

test("every folder of src/ has a layering decision", () => {
  const folders = readdirSync(SRC, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  assert.deepEqual(folders.filter((f) => !(f in ALLOWED)), []);
});
