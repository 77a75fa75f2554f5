/**
 * Pulls exact byte counts out of an async stream of chunks (an HTTP request body, a file). Never buffers more
 * than one chunk beyond what was asked, so a huge or endless input costs only what the reader consumes.
 */
import { VigilError } from "../../errors.ts";

export class StreamReader {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private done = false;
  /** Bytes handed out so far (the offset of the next byte). */
  offset = 0;

  constructor(private readonly source: AsyncIterator<Uint8Array>) {}

  static from(iterable: AsyncIterable<Uint8Array>): StreamReader {
    return new StreamReader(iterable[Symbol.asyncIterator]());
  }

  private async fill(min: number): Promise<void> {
    while (this.bufferedBytes < min && !this.done) {
      const next = await this.source.next();
      if (next.done) {
        this.done = true;
        break;
      }
      const b = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
      if (b.length > 0) {
        this.buffered.push(b);
        this.bufferedBytes += b.length;
      }
    }
  }

  private take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const head = this.buffered[0]!;
      const want = n - filled;
      if (head.length <= want) {
        head.copy(out, filled);
        filled += head.length;
        this.buffered.shift();
      } else {
        head.copy(out, filled, 0, want);
        this.buffered[0] = head.subarray(want);
        filled += want;
      }
    }
    this.bufferedBytes -= n;
    this.offset += n;
    return out;
  }

  /** Exactly `n` bytes (n is small: headers, manifests), or a "truncated" error. */
  async readExactly(n: number, what: string): Promise<Buffer> {
    await this.fill(n);
    if (this.bufferedBytes < n) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: truncated in ${what} at byte ${this.offset + this.bufferedBytes}`);
    return this.take(n);
  }

  /** Streams exactly `n` bytes to `sink` in chunks of at most 1 MiB, or fails as truncated. */
  async pipeExactly(n: number, what: string, sink: (chunk: Buffer) => Promise<void> | void): Promise<void> {
    let left = n;
    while (left > 0) {
      await this.fill(1);
      if (this.bufferedBytes === 0) throw new VigilError("VIGIL_BAD_REQUEST", `Invalid bundle: truncated in ${what} at byte ${this.offset} (${left} bytes missing)`);
      const step = Math.min(left, this.bufferedBytes, 1024 * 1024);
      await sink(this.take(step));
      left -= step;
    }
  }

  /** Reads at most `n` more bytes and tells whether the input ended there. */
  async atEnd(): Promise<boolean> {
    await this.fill(1);
    return this.bufferedBytes === 0;
  }
}
