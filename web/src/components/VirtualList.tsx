/** A list that renders only the rows in view (lib/virtual-window.ts), keyboard-navigable as a listbox/grid. */
import { useLayoutEffect, useRef, useState, type ReactNode } from "react";
import { visibleRange } from "../lib/virtual-window.ts";

export interface VirtualListProps<T> {
  items: T[];
  rowHeight: number;
  height: number | string;
  label: string;
  row: (item: T, index: number) => ReactNode;
  rowKey: (item: T) => string;
}

export function VirtualList<T>({ items, rowHeight, height, label, row, rowKey }: VirtualListProps<T>) {
  const ref = useRef<HTMLDivElement>(null);
  const [scrollTop, setScrollTop] = useState(0);
  const [viewport, setViewport] = useState(600);
  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    const measure = () => setViewport(el.clientHeight);
    measure();
    const ro = new ResizeObserver(measure);
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  const r = visibleRange(items.length, rowHeight, scrollTop, viewport);
  return (
    <div ref={ref} className="vlist" style={{ height }} role="rowgroup" aria-label={label} aria-rowcount={items.length} tabIndex={-1} onScroll={(e) => setScrollTop(e.currentTarget.scrollTop)}>
      <div style={{ height: r.total, position: "relative" }}>
        <div style={{ position: "absolute", top: r.offset, left: 0, right: 0 }}>
          {items.slice(r.first, r.end).map((item, i) => (
            <div key={rowKey(item)} style={{ height: rowHeight }} className="vrow" role="row" aria-rowindex={r.first + i + 1}>
              {row(item, r.first + i)}
            </div>
          ))}
        </div>
      </div>
    </div>
  );
}
