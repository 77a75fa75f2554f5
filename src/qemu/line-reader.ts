/**
 * Splits a byte stream into newline-terminated lines with a hard cap on line length. Used for every
 * line-oriented peer (QMP, the guest agent, the vtime channel): a peer that never sends a newline must not make
 * the host buffer without bound. An over-long line is reported once and discarded up to its newline.
 */
export class LineReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private discarding = false;

  constructor(
    private readonly maxLineBytes: number,
    private readonly onLine: (line: string) => void,
    private readonly onOversize: (bytes: number) => void,
  ) {}

  push(data: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = data.indexOf(0x0a, start);
      if (nl === -1) break;
      this.take(data.subarray(start, nl), true);
      start = nl + 1;
    }
    if (start < data.length) this.take(data.subarray(start), false);
  }

  private take(piece: Buffer, complete: boolean): void {
    if (this.discarding) {
      if (complete) this.discarding = false;
      return;
    }
    if (this.buffered + piece.length > this.maxLineBytes) {
      this.onOversize(this.buffered + piece.length);
      this.chunks = [];
      this.buffered = 0;
      this.discarding = !complete;
      return;
    }
    if (!complete) {
      this.chunks.push(Buffer.from(piece));
      this.buffered += piece.length;
      return;
    }
    const line = this.chunks.length === 0 ? piece : Buffer.concat([...this.chunks, piece]);
    this.chunks = [];
    this.buffered = 0;
    const text = line.toString("utf8").replace(/\r$/, "");
    if (text.length > 0) this.onLine(text);
  }
}
