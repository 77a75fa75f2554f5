/**
 * An async iterator that runs `cleanup` exactly once however it ends: read to the end, failed, or given up by
 * its consumer — also before the first value was asked for, when a generator's own `finally` never runs (a
 * generator that has not started ignores `return()`; a client that disconnects before the first chunk).
 */
export function withCleanup<T>(inner: AsyncGenerator<T>, cleanup: () => void): AsyncGenerator<T> {
  let done = false;
  const once = () => {
    if (done) return;
    done = true;
    cleanup();
  };
  const wrapped: AsyncGenerator<T> = {
    async next(...args: [] | [unknown]) {
      try {
        const r = await inner.next(...args);
        if (r.done) once();
        return r;
      } catch (err) {
        once();
        throw err;
      }
    },
    async return(value?: unknown) {
      try {
        return await inner.return(value as never);
      } finally {
        once();
      }
    },
    async throw(err?: unknown) {
      try {
        return await inner.throw(err);
      } finally {
        once();
      }
    },
    [Symbol.asyncIterator]() {
      return wrapped;
    },
  };
  return wrapped;
}
