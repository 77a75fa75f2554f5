/**
 * `npm run bench -- NAME [options]`: runs one benchmark. Each compares vigil against a baseline measured in the
 * same run, alternating the two so drift on a noisy machine hits both alike.
 */
const benchmarks: Record<string, () => Promise<{ run(args: string[]): Promise<void> }>> = {
  boot: () => import("./boot.ts"),
  clone: () => import("./clone.ts"),
  snapshot: () => import("./snapshot.ts"),
  bundle: () => import("./bundle.ts"),
  vtime: () => import("./vtime.ts"),
  introspect: () => import("./introspect.ts"),
  witness: () => import("./witness.ts"),
  jail: () => import("./jail.ts"),
  network: () => import("./network.ts"),
  "fw-update": () => import("./fw-update.ts"),
  migration: () => import("./migration.ts"),
  "posture-data": () => import("./posture-data.ts"),
  "ext4-read": () => import("./ext4-read.ts"),
  "offline-scan": () => import("./offline-scan.ts"),
  recording: () => import("./recording.ts"),
  web: () => import("./web.ts"),
};

const [name, ...args] = process.argv.slice(2);
const load = name ? benchmarks[name] : undefined;
if (!load) {
  process.stderr.write(`usage: npm run bench -- <${Object.keys(benchmarks).join("|")}> [options]\n`);
  process.exit(2);
}
await (await load()).run(args);
