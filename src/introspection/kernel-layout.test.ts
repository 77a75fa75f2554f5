import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { ImageCatalog } from "../image/catalog.ts";
import { vigilCache } from "../paths.ts";
import { Btf } from "./btf.ts";
import { readElfSectionFromFile } from "./elf.ts";
import { buildKernelModel } from "./kernel-model.ts";
import { cString, describeAddress, isKernelPointer, isPrintableCString, kernelLayout, namesAt, symbolExtent, walkList } from "./kernel-layout.ts";
import { LAYOUT, buildSyntheticKernel } from "./testing/synthetic-kernel.ts";

const g = buildSyntheticKernel();
const cpu = g.regs[0] as (typeof g.regs)[number];
const model = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4 });

test("kernelLayout: text and rodata ranges, the module area, and every offset the walkers use", () => {
  const l = kernelLayout(model);
  assert.deepEqual(l.problems, []);
  assert.deepEqual(l.text, g.text);
  assert.deepEqual(l.rodata, g.rodata);
  assert.deepEqual(l.moduleArea, { start: 0xffff_ffff_c000_0000n, end: 0xffff_ffff_ff00_0000n });
  const T = LAYOUT.task;
  assert.deepEqual(l.task, {
    size: T.size, tasks: T.tasks, pid: T.pid, tgid: T.tgid, comm: T.comm, commLen: 16, realParent: T.realParent, groupLeader: T.groupLeader, exitState: T.exitState,
    state: T.state, startTime: T.startTime, schedClass: T.schedClass, threadPid: T.threadPid, pidLinks: T.pidLinks, mm: T.mm, flags: T.flags,
  });
  assert.deepEqual(l.pid, { tasks: 32, nr: 112, nsXaHead: 8, nodeShift: 0, nodeOffset: 1, nodeParent: 8, nodeSlots: 40, nodeSlotCount: 64 });
  assert.deepEqual(l.module, { list: 8, name: 24, nameLen: 56, state: 0, mkobjKobj: 80, mkKobj: 0, mkMod: 64, kobjEntry: 8, kobjKtype: 40, ksetList: 0 });
  assert.deepEqual(l.ftrace, { pageNext: 0, pageRecords: 8, pageIndex: 16, recIp: 0, recSize: 16 });
  assert.equal(kernelLayout(model), l, "cached per model");
});

test("kernelLayout without BTF says why the walks cannot run", () => {
  const m = buildKernelModel(g.mem, { cr3: cpu.cr3, cr4: cpu.cr4, btf: "none" });
  const l = kernelLayout(m);
  assert.equal(l.task, undefined);
  assert.equal(l.module, undefined);
  assert.ok(l.problems.some((p) => /no BTF/.test(p)));
  assert.ok(l.text, "text does not need BTF");
});

test("symbol helpers: aliases, descriptions, extents through internal labels", () => {
  const s = model.symbols;
  const getpid = g.symbols.get("__x64_sys_getpid") as bigint;
  assert.deepEqual(namesAt(s, getpid).sort(), ["__do_sys_getpid", "__x64_sys_getpid"]);
  assert.deepEqual(namesAt(s, getpid + 1n), []);
  assert.equal(describeAddress(s, getpid + 0x10n), `${namesAt(s, getpid)[0]}+0x10`);
  assert.equal(describeAddress(s, 0x1234n), "0x1234", "not near any kernel symbol");
  const entry = g.symbols.get("entry_SYSCALL_64") as bigint;
  assert.deepEqual(symbolExtent(s, "entry_SYSCALL_64"), { start: entry, end: entry + 0x2bn });
  const through = ["entry_SYSCALL_64_safe_stack", "entry_SYSCALL_64_after_hwframe", "syscall_return_via_sysret", "entry_SYSRETQ_unsafe_stack", "entry_SYSRETQ_end"];
  assert.deepEqual(symbolExtent(s, "entry_SYSCALL_64", through), { start: entry, end: g.symbols.get("xen_error_entry") as bigint });
  assert.equal(symbolExtent(s, "no_such_symbol"), undefined);
  assert.equal(symbolExtent(s, "entry_SYSCALL_64", through, 16), undefined, "longer than the bound");
  const sct = g.symbols.get("sys_call_table") as bigint;
  assert.deepEqual(symbolExtent(s, "sys_call_table"), { start: sct, end: sct + 41n * 8n });
});

test("guest strings are cut and sanitised; pointers must be canonical kernel addresses", () => {
  assert.equal(cString(Buffer.from("init\0junk")), "init");
  assert.equal(cString(Buffer.from("a\x1b[31mb\nc")), "a?[31mb?c");
  assert.equal(cString(Buffer.from([0xff, 0x41]), 0, 1), "?");
  assert.equal(isPrintableCString(Buffer.from("sleep\0"), 0, 16), true);
  assert.equal(isPrintableCString(Buffer.from("\0"), 0, 16), false);
  assert.equal(isPrintableCString(Buffer.from("x".repeat(20)), 0, 16), false);
  assert.equal(isKernelPointer(0xffff_8880_0000_0000n, 4), true);
  assert.equal(isKernelPointer(0xff11_0000_0000_0000n, 4), false);
  assert.equal(isKernelPointer(0xff11_0000_0000_0000n, 5), true);
  assert.equal(isKernelPointer(0x7fff_0000_0000n, 5), false);
});

/** A tiny address space: a Buffer at virtual base 0xffff888000000000. */
function space(buf: Buffer) {
  const base = 0xffff_8880_0000_0000n;
  return {
    base,
    read(addr: bigint, n: number): Buffer | undefined {
      const o = addr - base;
      return o >= 0n && o + BigInt(n) <= BigInt(buf.length) ? buf.subarray(Number(o), Number(o) + n) : undefined;
    },
  };
}

test("walkList: complete lists, cycles, bad pointers and limits end without throwing", () => {
  const buf = Buffer.alloc(4096);
  const sp = space(buf);
  const at = (i: number): bigint => sp.base + BigInt(i * 16);
  // head(0) -> 1 -> 2 -> 3 -> head
  const link = (from: number, to: number): void => {
    buf.writeBigUInt64LE(at(to), from * 16);
    buf.writeBigUInt64LE(at(from), to * 16 + 8);
  };
  link(0, 1);
  link(1, 2);
  link(2, 3);
  link(3, 0);
  let w = walkList(sp, at(0), 4, 100);
  assert.deepEqual([w.complete, w.nodes.length, w.badBackLinks], [true, 3, 0]);
  assert.equal(walkList(sp, at(0), 4, 2).complete, false, "limit");
  buf.writeBigUInt64LE(at(1), 3 * 16); // 3 -> 1: a cycle that never returns to the head
  w = walkList(sp, at(0), 4, 100);
  assert.equal(w.complete, false);
  assert.match(w.problem ?? "", /twice/);
  buf.writeBigUInt64LE(0x1234n, 2 * 16);
  assert.match(walkList(sp, at(0), 4, 100).problem ?? "", /not a kernel address/);
  buf.writeBigUInt64LE(sp.base + 0x10_0000n, 2 * 16);
  assert.match(walkList(sp, at(0), 4, 100).problem ?? "", /cannot be read/);
});

test("fuzz: walkList over random memory is bounded and never throws", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 256, maxLength: 1024 }), fc.nat({ max: 60 }), (bytes, start) => {
      const buf = Buffer.from(bytes);
      const sp = space(buf);
      // Point every 8-byte word somewhere inside the buffer half of the time, to make long chains.
      for (let i = 0; i + 8 <= buf.length; i += 8) if ((buf[i] as number) & 1) buf.writeBigUInt64LE(sp.base + BigInt(((buf[i + 1] as number) * 16) % buf.length), i);
      const w = walkList(sp, sp.base + BigInt((start * 16) % buf.length), 4, 50);
      assert.ok(w.nodes.length <= 51);
    }),
    { numRuns: 300 },
  );
});

// The real kernel: the layout resolved from the tiny image's vmlinux BTF must match bpftool's reading of the
// same BTF for every member that is a direct member of its struct. Set-up installs bpftool and builds the image:
// this fails, not skips, when either is missing.
test("cross-check: the offsets kernelLayout resolves from the tiny image's vmlinux agree with bpftool", () => {
  const tiny = new ImageCatalog(vigilCache()).tinyDir();
  const path = process.env.VIGIL_TEST_VMLINUX ?? (tiny ? join(tiny, "vmlinux") : "");
  assert.ok(existsSync(path), "set-up must build the tiny image (with its vmlinux): run npm test / guest/build-tiny.sh");
  const section = readElfSectionFromFile(path, ".BTF");
  assert.ok(section);
  const btf = Btf.parse(section);
  const dump = execFileSync("bpftool", ["btf", "dump", "file", path, "format", "raw"], { encoding: "utf8", maxBuffer: 512 * 1024 * 1024 });
  // "[id] STRUCT 'name' size=N vlen=M" then "\t'member' type_id=T bits_offset=B"
  const members = new Map<string, Map<string, number>>();
  let current: Map<string, number> | undefined;
  for (const line of dump.split("\n")) {
    const s = /^\[\d+\] (?:STRUCT|UNION) '([^']*)' size=\d+ vlen=(\d+)/.exec(line);
    if (s) {
      current = s[1] && Number(s[2]) > 0 && !members.has(s[1]) ? new Map() : undefined;
      if (current) members.set(s[1] as string, current);
      continue;
    }
    const m = /^\t'([^']*)' type_id=\d+ bits_offset=(\d+)/.exec(line);
    if (m && current) current.set(m[1] as string, Number(m[2]));
  }
  const direct: [string, string][] = [
    ["task_struct", "tasks"], ["task_struct", "pid"], ["task_struct", "tgid"], ["task_struct", "comm"], ["task_struct", "real_parent"], ["task_struct", "group_leader"],
    ["task_struct", "exit_state"], ["task_struct", "__state"], ["task_struct", "start_time"], ["task_struct", "sched_class"], ["task_struct", "thread_pid"],
    ["task_struct", "pid_links"], ["task_struct", "mm"], ["task_struct", "flags"], ["pid", "tasks"], ["pid", "numbers"], ["upid", "nr"], ["xa_node", "shift"],
    ["xa_node", "offset"], ["xa_node", "parent"], ["xa_node", "slots"], ["module", "list"], ["module", "name"], ["module", "state"], ["module", "mkobj"],
    ["module_kobject", "kobj"], ["module_kobject", "mod"], ["kobject", "entry"], ["kobject", "ktype"], ["kset", "list"], ["ftrace_page", "next"],
    ["ftrace_page", "records"], ["ftrace_page", "index"], ["dyn_ftrace", "ip"], ["pid_namespace", "idr"], ["idr", "idr_rt"], ["xarray", "xa_head"],
  ];
  for (const [s, m] of direct) {
    const bits = members.get(s)?.get(m);
    assert.ok(bits !== undefined, `bpftool has ${s}.${m}`);
    assert.equal(btf.structMemberOffset(s, m) * 8, bits, `${s}.${m}`);
  }
});
