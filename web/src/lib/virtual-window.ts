/**
 * The rows a virtualised list renders: those in view plus `overscan` on each side. Rows have one fixed height, so
 * 10,000 VMs cost as much to draw as the forty on screen. Pure, so it is unit-tested without a browser.
 */
export interface WindowRange {
  first: number;
  /** One past the last row rendered. */
  end: number;
  /** Space above the first rendered row, in pixels. */
  offset: number;
  /** Height of all rows. */
  total: number;
}

export function visibleRange(count: number, rowHeight: number, scrollTop: number, viewport: number, overscan = 8): WindowRange {
  const n = Math.max(0, Math.floor(count));
  const h = rowHeight > 0 ? rowHeight : 1;
  const top = Math.max(0, Math.min(scrollTop, n * h));
  const first = Math.max(0, Math.floor(top / h) - overscan);
  const end = Math.min(n, Math.ceil((top + Math.max(0, viewport)) / h) + overscan);
  return { first, end: Math.max(first, end), offset: first * h, total: n * h };
}
