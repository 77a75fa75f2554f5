/** The generation tree: every fork of the VM (revert, clone, import) with its vmgenid and whether the guest reseeded. */
import { useEffect, useState } from "react";
import { api, errorText } from "../../lib/api.ts";
import type { Vm } from "../../lib/types.ts";
import { when } from "../../lib/format.ts";
import { treeOrder } from "../../lib/tree.ts";
import { ErrorLine } from "../../components/ErrorLine.tsx";

interface Generation {
  generation: number;
  parentGeneration: number | null;
  vmgenid: string;
  reason: string;
  snapshot: string | null;
  reseed: "seen" | "not-seen" | "unsupported" | null;
  createdBy: string;
  createdAt: string;
}

export function GenerationsTab({ vm }: { vm: Vm }) {
  const [g, setG] = useState<{ current: number; generations: Generation[] } | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    api<{ current: number; generations: Generation[] }>("GET", `/v1/vms/${vm.name}/generations`).then(setG, (err: unknown) => setError(errorText(err)));
  }, [vm.name, vm.generation]);
  if (error) return <ErrorLine error={error} />;
  if (!g) return <p>Loading…</p>;
  const rows = treeOrder(g.generations, (x) => String(x.generation), (x) => (x.parentGeneration === null ? null : String(x.parentGeneration)));
  return (
    <ul className="snap-tree" role="tree" aria-label="Generations">
      {rows.map(({ item: x, depth }) => (
        <li key={x.generation} role="treeitem" aria-level={depth + 1} style={{ paddingLeft: `${depth * 1.5}rem` }}>
          <strong>generation {x.generation}</strong> {g.current === x.generation && <span className="badge">current</span>} {x.reason}
          {x.snapshot ? ` from ${x.snapshot}` : ""} <code>{x.vmgenid}</code>{" "}
          {x.reseed && <span className={`badge ${x.reseed === "not-seen" ? "warn" : ""}`}>reseed {x.reseed}</span>}{" "}
          <small>
            {when(x.createdAt)} by {x.createdBy}
          </small>
        </li>
      ))}
    </ul>
  );
}
