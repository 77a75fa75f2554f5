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

/** How many request ids `ProgressBus` remembers the actor of (the oldest are forgotten first). */
const MAX_CLAIMED_REQUESTS = 10_000;

export class ProgressBus {
  private readonly listeners = new Set<(e: ProgressEvent) => void>();
  private readonly actors = new Map<string, string>();

  /**
   * Records who sent the request with this id (the API does, for every authenticated request), so that only
   * they may follow its progress. Request ids are chosen by clients: the first claim of an id holds, so nobody
   * can take over the id of a request that is already running (or a follower's, made just before it).
   */
  claim(requestId: string, actor: string): void {
    if (this.actors.has(requestId)) return;
    this.actors.set(requestId, actor);
    if (this.actors.size > MAX_CLAIMED_REQUESTS) this.actors.delete(this.actors.keys().next().value as string);
  }

  /** The actor who sent the request with this id, if it is still remembered. */
  actorOf(requestId: string): string | undefined {
    return this.actors.get(requestId);
  }

  emit(e: ProgressEvent): void {
    for (const l of [...this.listeners]) l(e);
  }

  subscribe(listener: (e: ProgressEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
