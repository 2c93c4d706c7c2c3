// A minimal event emitter shared by the call's modules (no DOM dependency).

export class Emitter {
  #handlers = new Map();

  /** Subscribe; returns a function that unsubscribes. */
  on(event, handler) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(handler);
    return () => this.off(event, handler);
  }

  once(event, handler) {
    const off = this.on(event, (...args) => {
      off();
      handler(...args);
    });
    return off;
  }

  off(event, handler) {
    this.#handlers.get(event)?.delete(handler);
  }

  emit(event, ...args) {
    for (const handler of [...(this.#handlers.get(event) ?? [])]) {
      try {
        handler(...args);
      } catch (err) {
        console.error(`[smiling] handler for "${event}" failed`, err);
      }
    }
  }

  removeAllListeners() {
    this.#handlers.clear();
  }
}

/** Resolve after `ms` milliseconds (used for reconnect back-off, never to wait for a condition). */
export function delay(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason ?? new DOMException("Aborted", "AbortError"));
      },
      { once: true },
    );
  });
}
