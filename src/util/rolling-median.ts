/**
 * The median of the last `max` values added: for a figure reported over a long run (the shadow replica's lag,
 * measured at every check for as long as a recording lasts), whose memory must not grow with the run.
 */
export class RollingMedian {
  private readonly values: number[] = [];

  constructor(private readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`RollingMedian keeps at least one value, not ${max}`);
  }

  add(value: number): void {
    this.values.push(value);
    if (this.values.length > this.max) this.values.shift();
  }

  /** How many values the median is of now (at most `max`). */
  get size(): number {
    return this.values.length;
  }

  /** The upper median of the values kept (null before the first). */
  get median(): number | null {
    if (this.values.length === 0) return null;
    const sorted = [...this.values].sort((a, b) => a - b);
    return sorted[sorted.length >> 1]!;
  }
}
