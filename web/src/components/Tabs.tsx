/** Tabs that are links (a tab can be bookmarked), with the ARIA tablist roles and arrow-key movement. */
import type { KeyboardEvent } from "react";

export interface TabDef {
  id: string;
  label: string;
}

export function Tabs({ tabs, current, onSelect }: { tabs: TabDef[]; current: string; onSelect: (id: string) => void }) {
  const move = (e: KeyboardEvent, i: number) => {
    const d = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
    if (!d) return;
    e.preventDefault();
    const next = tabs[(i + d + tabs.length) % tabs.length]!;
    onSelect(next.id);
    document.getElementById(`tab-${next.id}`)?.focus();
  };
  return (
    <div role="tablist" className="tabs">
      {tabs.map((t, i) => (
        <button key={t.id} id={`tab-${t.id}`} role="tab" aria-selected={t.id === current} tabIndex={t.id === current ? 0 : -1} onClick={() => onSelect(t.id)} onKeyDown={(e) => move(e, i)}>
          {t.label}
        </button>
      ))}
    </div>
  );
}
