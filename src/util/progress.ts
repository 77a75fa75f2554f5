/**
 * Progress of long operations (snapshot jobs, copies, exports), keyed by the request that started them. The
 * events stream forwards these to UIs and to the CLI, which draws a bar for its own request id.
 */
export interface ProgressEvent {
  requestId: string;
  what: string;
  current: number;
  total: number;
}

export class ProgressBus {
  private readonly listeners = new Set<(e: ProgressEvent) => void>();

  emit(e: ProgressEvent): void {
    for (const l of [...this.listeners]) l(e);
  }

  subscribe(listener: (e: ProgressEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
