/**
 * Metrics: the Prometheus text parses (a small parser of the 0.0.4 format, written here, reads every line back),
 * label values are escaped, the per-VM numbers come from /proc, QMP and the switch (a busy QMP leaves the disk out),
 * and who sees what: VM series only for VMs the actor may read, host series only with host.read.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { RequestContext } from "../auth/guard.ts";
import type { Actor } from "../auth/permissions.ts";
import { MetricsService, sumBlockstats, type MetricsDeps } from "./metrics-service.ts";
import { escapeLabelValue, renderExposition, PROMETHEUS_CONTENT_TYPE } from "./prometheus.ts";
import { webFixture } from "../api/testing/web-fixture.ts";

interface ParsedSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Every non-comment line is `name{label="value",…} value` (or `name value`); HELP/TYPE precede their samples. */
function parseExposition(text: string): { samples: ParsedSample[]; types: Map<string, string> } {
  assert.ok(text.endsWith("\n"), "the exposition ends with a newline");
  const samples: ParsedSample[] = [];
  const types = new Map<string, string>();
  for (const line of text.slice(0, -1).split("\n")) {
    if (line.startsWith("# HELP ")) continue;
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (gauge|counter)$/.exec(line);
    if (type) {
      types.set(type[1]!, type[2]!);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?[0-9.e+]+|NaN|[+-]Inf)$/.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    let rest = m[2] ?? "";
    while (rest.length > 0) {
      const l = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/.exec(rest);
      assert.ok(l, `bad labels in ${JSON.stringify(line)}`);
      labels[l[1]!] = l[2]!.replace(/\\(["\\n])/g, (_, c: string) => (c === "n" ? "\n" : c));
      rest = rest.slice(l[0].length);
    }
    assert.ok(types.has(m[1]!), `${m[1]} has no # TYPE before it`);
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return { samples, types };
}

const actor = (name: string, roles: Actor["roles"]): RequestContext => ({ actor: { userId: name, name, roles, groups: [], introspect: false, via: "token" }, requestId: "t" });

test("label values are escaped as the format says and read back intact", () => {
  assert.equal(escapeLabelValue('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
  const text = renderExposition([{ name: "vigil_x", help: "back\\slash\nnewline", type: "gauge", samples: [{ labels: { vm: 'a"b\\c\nd', host: "h" }, value: 1.5 }, { labels: {}, value: 0 }] }]);
  assert.match(text, /^# HELP vigil_x back\\\\slash\\nnewline$/m);
  const { samples } = parseExposition(text);
  assert.deepEqual(samples, [{ name: "vigil_x", labels: { vm: 'a"b\\c\nd', host: "h" }, value: 1.5 }, { name: "vigil_x", labels: {}, value: 0 }]);
  assert.throws(() => renderExposition([{ name: "bad-name", help: "", type: "gauge", samples: [] }]), /Bug in vigil/);
});

test("query-blockstats is summed over devices; any other shape is no number", () => {
  assert.deepEqual(sumBlockstats([{ device: "", qdev: "vda", stats: { rd_bytes: 100, wr_bytes: 7 } }, { device: "", stats: { rd_bytes: 1, wr_bytes: 2 } }]), { read: 101, written: 9 });
  assert.deepEqual(sumBlockstats([]), { read: 0, written: 0 });
  assert.equal(sumBlockstats({}), undefined);
  assert.equal(sumBlockstats([{ stats: { rd_bytes: -1, wr_bytes: 0 } }]), undefined);
  assert.equal(sumBlockstats([{ stats: { rd_bytes: "1", wr_bytes: 0 } }]), undefined);
  assert.equal(sumBlockstats(Array.from({ length: 1000 }, () => ({ stats: { rd_bytes: 1, wr_bytes: 1 } }))), undefined);
});

test("a running VM's numbers: this process as its QEMU, disk from QMP, NICs from the VM's side; a busy QMP leaves disk out", async () => {
  const view = (name: string, id: string) => ({ id, name, state: "running", host: "h1", spec: { memoryMiB: 512 } });
  const runtimes: Record<string, unknown> = {
    a: { pid: process.pid, recording: false, qmp: { isOpen: true, execute: async () => [{ stats: { rd_bytes: 4096, wr_bytes: 512 } }] } },
    b: { pid: process.pid, recording: false, qmp: { isOpen: true, execute: () => new Promise(() => {}) } },
  };
  const deps = {
    hostName: 'host "one"',
    qmpTimeoutMs: 100,
    vms: {
      list: async () => [view("vm-a", "a"), view("vm-b", "b"), { ...view("vm-c", "c"), state: "stopped" }],
      lookup: async (_ctx: RequestContext, name: string) => ({ name }),
      describeVm: (r: { name: string }) => view(r.name, r.name.slice(3)),
      liveRuntime: (id: string) => runtimes[id],
    },
    netCounters: async (_ctx: RequestContext, name: string) => (name === "vm-a" ? [{ rx: { bytes: 10 }, tx: { bytes: 300 } }, { rx: { bytes: 5 }, tx: { bytes: 1 } }] : []),
  } as unknown as MetricsDeps;
  const m = new MetricsService(deps);
  const a = await m.vm(actor("op", ["operator"]), "vm-a");
  assert.equal(a.running, true);
  assert.ok(a.cpuSeconds > 0 && a.rssBytes > 1024 * 1024, JSON.stringify(a));
  assert.equal(a.memoryBytes, 512 * 1024 * 1024);
  assert.deepEqual([a.diskReadBytes, a.diskWrittenBytes, a.netRxBytes, a.netTxBytes], [4096, 512, 301, 15]);
  assert.ok(Math.abs(Date.parse(a.at) - Date.now()) < 5000);
  const t0 = Date.now();
  const b = await m.vm(actor("op", ["operator"]), "vm-b");
  assert.ok(Date.now() - t0 < 2000, "a QMP that does not answer costs the timeout, no more");
  assert.deepEqual([b.diskReadBytes, b.netRxBytes], [null, null]);
  // Without network.read the counters are not even asked for (a refusal would be audited at every poll).
  const noNet = await m.vm(actor("x", ["auditor"]), "vm-a");
  assert.equal(noNet.netRxBytes, 301, "auditors have network.read");

  const { samples, types } = parseExposition(await m.exposition(actor("op", ["operator"])));
  const one = (name: string, vm: string) => samples.find((s) => s.name === name && s.labels.vm === vm);
  assert.equal(one("vigil_vm_running", "vm-a")?.value, 1);
  assert.equal(one("vigil_vm_running", "vm-c")?.value, 0);
  assert.equal(one("vigil_vm_running", "vm-a")?.labels.host, 'host "one"');
  assert.equal(one("vigil_vm_disk_read_bytes_total", "vm-a")?.value, 4096);
  assert.equal(one("vigil_vm_disk_read_bytes_total", "vm-b"), undefined);
  assert.equal(one("vigil_vm_net_rx_bytes_total", "vm-a")?.value, 301);
  assert.equal(one("vigil_vm_memory_configured_bytes", "vm-c")?.value, 512 * 1024 * 1024);
  assert.equal(types.get("vigil_vm_cpu_seconds_total"), "counter");
  assert.equal(types.get("vigil_vm_memory_rss_bytes"), "gauge");
  assert.equal(samples.find((s) => s.name === "vigil_host_vms" && s.labels.state === "running")?.value, 2);
  assert.equal(samples.find((s) => s.name === "vigil_host_vms" && s.labels.state === "stopped")?.value, 1);
  assert.ok((samples.find((s) => s.name === "vigil_host_memory_total_bytes")?.value ?? 0) > 0);
  assert.ok(samples.some((s) => s.name === "vigil_host_load1"));
});

test("/metrics and /v1/vms/NAME/metrics show each actor only what vm.read allows; host series need host.read", async (t) => {
  const f = await webFixture(t);
  await f.addVm("bobs", "user:bob", "stopped", 256);
  await f.addVm("carols", "user:carol", "stopped", 128);
  const scrape = async (token: string) => {
    const res = await f.daemon.app.request("/metrics", { headers: { authorization: `Bearer ${token}` } }, { transport: "tcp" });
    return { status: res.status, type: res.headers.get("content-type"), text: await res.text() };
  };
  const auditor = await scrape(f.tokens.auditor);
  assert.equal(auditor.status, 200);
  assert.equal(auditor.type, PROMETHEUS_CONTENT_TYPE);
  const a = parseExposition(auditor.text).samples;
  assert.deepEqual([...new Set(a.filter((s) => s.name.startsWith("vigil_vm_")).map((s) => s.labels.vm))].sort(), ["bobs", "carols"]);
  assert.equal(a.find((s) => s.name === "vigil_vm_memory_configured_bytes" && s.labels.vm === "carols")?.value, 128 * 1024 * 1024);
  assert.equal(a.find((s) => s.name === "vigil_vm_memory_configured_bytes")?.labels.host, f.daemon.deps.host.name);
  assert.equal(a.find((s) => s.name === "vigil_host_vms" && s.labels.state === "stopped")?.value, 2);

  const bob = parseExposition((await scrape(f.tokens.bob)).text).samples;
  assert.deepEqual([...new Set(bob.map((s) => s.labels.vm))], ["bobs"]);
  assert.ok(!bob.some((s) => s.name.startsWith("vigil_host_")), "an owner has no host.read");
  assert.ok(!(await scrape(f.tokens.carol)).text.includes('vm="bobs"'));
  const nobody = await scrape(f.tokens.nobody);
  assert.equal(nobody.status, 403);

  const json = async (token: string, name: string) => f.daemon.app.request(`/v1/vms/${name}/metrics`, { headers: { authorization: `Bearer ${token}` } }, { transport: "tcp" });
  const mine = await json(f.tokens.bob, "bobs");
  assert.equal(mine.status, 200);
  const body = (await mine.json()) as Record<string, unknown>;
  assert.deepEqual(Object.keys(body).sort(), ["at", "cpuSeconds", "diskReadBytes", "diskWrittenBytes", "memoryBytes", "netRxBytes", "netTxBytes", "rssBytes", "running"]);
  assert.deepEqual({ ...body, at: "" }, { at: "", running: false, cpuSeconds: 0, rssBytes: 0, memoryBytes: 256 * 1024 * 1024, diskReadBytes: null, diskWrittenBytes: null, netRxBytes: null, netTxBytes: null });
  const hidden = await json(f.tokens.carol, "bobs");
  assert.equal(hidden.status, 404);
  assert.equal(((await hidden.json()) as { error: { code: string } }).error.code, "VIGIL_VM_NOT_FOUND");
});
