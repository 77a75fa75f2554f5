/**
 * Test support: the dormant Debian disk set-up builds (scripts/build-debian-dormant.sh; docs/transience.md,
 * "Test data"): a GPT disk with one ext4 partition holding a debootstrap minbase bookworm root (base.qcow2), and a
 * linked-clone overlay (overlay.qcow2) that changed /etc/motd, planted /opt/planted/eicar-like.txt and deleted
 * /opt/removed/eicar-like.txt. A test that needs it fails (never skips) when set-up did not build it.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const SCRIPT = join(import.meta.dirname, "..", "..", "..", "scripts", "build-debian-dormant.sh");

export interface DormantFixture {
  readonly dir: string;
  readonly base: string;
  readonly overlay: string;
  /** The build root's /var/lib/dpkg/status and /etc/os-release, copied before the disk was made. */
  readonly dpkgStatus: string;
  readonly osRelease: string;
  /** The marker line of the planted (and of the deleted) file. */
  readonly marker: string;
  readonly manifest: {
    readonly key: string;
    readonly buildSeconds: number;
    readonly suite: string;
    readonly packages: number;
    readonly disk: { readonly bytes: number; readonly label: "gpt"; readonly partitionStartBytes: number; readonly partitionBytes: number; readonly partitionUuid: string; readonly fsUuid: string };
    readonly overlay: { readonly changed: readonly string[]; readonly added: readonly string[]; readonly deleted: readonly string[] };
  };
}

/** The fixture's files; throws when set-up has not built it. */
export function dormantFixture(): DormantFixture {
  const r = spawnSync("bash", [SCRIPT, "--print-dir"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error("The dormant Debian test disk is not built: set-up (scripts/bootstrap.sh, as root) builds it with scripts/build-debian-dormant.sh");
  const dir = r.stdout.trim();
  return {
    dir,
    base: join(dir, "base.qcow2"),
    overlay: join(dir, "overlay.qcow2"),
    dpkgStatus: join(dir, "reference", "dpkg-status"),
    osRelease: join(dir, "reference", "os-release"),
    marker: readFileSync(join(dir, "reference", "marker.txt"), "utf8").trimEnd(),
    manifest: JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as DormantFixture["manifest"],
  };
}
