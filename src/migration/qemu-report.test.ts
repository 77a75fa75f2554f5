import { strict as assert } from "node:assert";
import { execFileSync } from "node:child_process";
import { test } from "node:test";
import { probeQemu, readReport, versionOf } from "./qemu-report.ts";

test("probing this host's QEMU: its version, the migration capabilities and parameters, TLS, machines and CPU models", async () => {
  const r = await probeQemu("here");
  const banner = execFileSync("qemu-system-x86_64", ["--version"], { encoding: "utf8" });
  assert.ok(banner.includes(`version ${r.version}`) || banner.includes(`version ${r.version.replace(/\.0$/, "")}`), `${r.version} in ${banner}`);
  for (const c of ["return-path", "pause-before-switchover", "events", "auto-converge", "multifd"]) assert.ok(r.capabilities.includes(c), c);
  for (const p of ["tls-creds", "tls-hostname", "tls-authz", "downtime-limit", "max-bandwidth"]) assert.ok(r.parameters.includes(p), p);
  assert.deepEqual(r.objectTypes, ["tls-creds-x509", "authz-simple"]);
  assert.ok(r.machines.includes("pc-i440fx-7.2"));
  assert.deepEqual(r.cpus.find((c) => c.name === "max"), { name: "max", migrationSafe: false });
  assert.deepEqual(r.cpus.find((c) => c.name === "qemu64"), { name: "qemu64", migrationSafe: true });
});

test("the test hook hides capabilities from the probe", async () => {
  process.env.VIGIL_TEST_HIDE_MIGRATE_CAPABILITIES = "return-path,events";
  try {
    const r = await probeQemu("here");
    assert.ok(!r.capabilities.includes("return-path") && !r.capabilities.includes("events"));
    assert.ok(r.capabilities.includes("pause-before-switchover"));
  } finally {
    delete process.env.VIGIL_TEST_HIDE_MIGRATE_CAPABILITIES;
  }
});

test("a probe of something that is not QEMU fails with a clear error", async () => {
  await assert.rejects(probeQemu("here", "/bin/false"), /Cannot ask this host's QEMU what it can do/);
});

test("hostile answers are bounded: odd names dropped, an unreadable version says so", async () => {
  assert.equal(versionOf({ qemu: { major: -1, minor: 2, micro: 0 } }), "unknown");
  assert.equal(versionOf({ qemu: { major: 7, minor: 2, micro: 22 } }), "7.2.22");
  const answers: Record<string, unknown> = {
    "query-version": { qemu: { major: 7, minor: 2, micro: 1 } },
    "query-migrate-capabilities": [{ capability: "events" }, { capability: "a b;rm" }, { capability: 5 }, "x"],
    "query-migrate-parameters": { "tls-creds": "", ["x".repeat(100)]: 1 },
    "qom-list-types": [{ name: "authz-simple" }, { name: "tls-creds-x509" }, { name: "other" }],
  };
  const r = await readReport("h", async (c) => answers[c], { machines: false, cpus: false });
  assert.deepEqual(r, { host: "h", version: "7.2.1", capabilities: ["events"], parameters: ["tls-creds"], objectTypes: ["tls-creds-x509", "authz-simple"], machines: [], cpus: [] });
});
