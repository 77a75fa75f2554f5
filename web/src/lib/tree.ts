/**
 * Items with parent links, in depth-first order with their depth: how a snapshot or generation tree is drawn.
 * Bounded: an item whose parent is missing is a root, and a cycle (which the API never sends) cannot loop.
 */
export function treeOrder<T>(items: T[], id: (t: T) => string, parent: (t: T) => string | null): { item: T; depth: number }[] {
  const byParent = new Map<string | null, T[]>();
  const ids = new Set(items.map(id));
  for (const it of items) {
    const p = parent(it);
    const key = p !== null && ids.has(p) ? p : null;
    byParent.set(key, [...(byParent.get(key) ?? []), it]);
  }
  const out: { item: T; depth: number }[] = [];
  const seen = new Set<string>();
  const walk = (key: string | null, depth: number) => {
    for (const it of byParent.get(key) ?? []) {
      const k = id(it);
      if (seen.has(k)) continue;
      seen.add(k);
      out.push({ item: it, depth });
      walk(k, depth + 1);
    }
  };
  walk(null, 0);
  // Anything only reachable through a cycle still shows, as a root.
  for (const it of items) if (!seen.has(id(it))) out.push({ item: it, depth: 0 });
  return out;
}
