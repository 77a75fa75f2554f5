/**
 * A `ScanSource` over a directory of the host, for tests and for cross-checks with Debian's `yara -r`: regular files
 * only (symlinks are not followed, as a guest file system's reader does not follow them either), paths reported as
 * absolute inside `root`, in a stable (sorted) order.
 */
import { lstatSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ScanFile, ScanSource } from "../signature-scan.ts";

export function hostDirSource(root: string, name = `host directory ${root}`): ScanSource {
  return {
    name,
    *files(): Iterable<ScanFile> {
      const stack = ["/"];
      while (stack.length > 0) {
        const rel = stack.pop()!;
        const names = readdirSync(join(root, rel)).sort().reverse();
        for (const n of names) {
          const p = rel === "/" ? `/${n}` : `${rel}/${n}`;
          const st = lstatSync(join(root, p));
          if (st.isDirectory()) stack.push(p);
          else if (st.isFile()) yield { path: p, size: st.size, read: () => readFileSync(join(root, p)) };
        }
      }
    },
  };
}
