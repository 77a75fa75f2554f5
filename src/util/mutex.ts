/**
 * Async mutual exclusion. `KeyedMutex` gives every VM its own operation lock: two operations on one VM never
 * interleave, operations on different VMs run side by side.
 */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();
  private held = false;

  /** True while some caller holds the lock. */
  get locked(): boolean {
    return this.held;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const previous = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((resolve) => (release = resolve));
    await previous;
    this.held = true;
    try {
      return await fn();
    } finally {
      this.held = false;
      release();
    }
  }
}

export class KeyedMutex {
  private readonly locks = new Map<string, { mutex: Mutex; users: number }>();

  isLocked(key: string): boolean {
    return this.locks.get(key)?.mutex.locked ?? false;
  }

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    let entry = this.locks.get(key);
    if (!entry) {
      entry = { mutex: new Mutex(), users: 0 };
      this.locks.set(key, entry);
    }
    entry.users++;
    try {
      return await entry.mutex.run(fn);
    } finally {
      entry.users--;
      if (entry.users === 0) this.locks.delete(key);
    }
  }
}
