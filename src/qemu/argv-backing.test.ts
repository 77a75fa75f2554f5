/** The explicit backing chain of a jailed VM's disks (argv.ts, `LaunchPlan.backing`). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { buildArgv, type LaunchPlan } from "./argv.ts";
import { vmSpecSchema } from "../vm/spec.ts";

const raw = JSON.parse(readFileSync(join(import.meta.dirname, "testdata", "argv", "disk-boot-kvm.json"), "utf8")) as LaunchPlan;
const plan: LaunchPlan = { ...raw, spec: vmSpecSchema.parse(raw.spec) };
const blockdevs = (argv: string[]) => argv.flatMap((a, i) => (argv[i - 1] === "-blockdev" || argv[i - 1] === "-add-fd" ? [`${argv[i - 1]} ${a}`] : []));

test("a backing chain is spelled out bottom-up, read-only, through descriptors, ending in no backing", () => {
  const argv = buildArgv({
    ...plan,
    backing: {
      root: [
        { file: "/var/lib/vigil/images/t,1/disk.qcow2", format: "qcow2", fd: 3 },
        { file: "/var/cache/vigil/base.raw", format: "raw", fd: 4 },
      ],
      data: [],
    },
  });
  assert.deepEqual(blockdevs(argv), [
    "-add-fd fd=4,set=4,opaque=/var/cache/vigil/base.raw",
    "-blockdev driver=file,node-name=root-b1-file,filename=/dev/fdset/4,read-only=on",
    "-blockdev driver=raw,node-name=root-b1,file=root-b1-file,read-only=on",
    "-add-fd fd=3,set=3,opaque=/var/lib/vigil/images/t,,1/disk.qcow2",
    "-blockdev driver=file,node-name=root-b0-file,filename=/dev/fdset/3,read-only=on",
    "-blockdev driver=qcow2,node-name=root-b0,file=root-b0-file,read-only=on,backing=root-b1",
    "-blockdev driver=file,node-name=root-file,filename=/srv/v/vms/0d9a/disks/root.qcow2,discard=unmap",
    "-blockdev driver=qcow2,node-name=root,file=root-file,backing=root-b0",
    "-blockdev driver=file,node-name=data-file,filename=/srv/v/vms/0d9a/disks/data.qcow2,discard=unmap",
    // a disk without backing says so: a backing file written into its header later is not followed
    '-blockdev {"driver":"qcow2","node-name":"data","file":"data-file","backing":null}',
  ]);
});

test("without a chain the disk lines are unchanged (QEMU follows the header)", () => {
  const argv = buildArgv(plan);
  assert.ok(!argv.includes("-add-fd"));
  assert.ok(argv.includes("driver=qcow2,node-name=root,file=root-file"));
});
