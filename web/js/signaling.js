// The signaling WebSocket (docs/signaling.md, protocol version 1): JSON frames {event, data},
// authentication with the `authenticate` message (the token stays out of URLs and access logs),
// an application keep-alive (`ping` / `pong`), and detection of a silently dead connection.
//
// One SignalingClient is one connection. Reconnecting is the call's job (call.js): it opens a new
// client, which is how docs/signaling.md says a client comes back after a network change.

import { AppError } from "./errors.js";
import { Emitter } from "./events.js";

export const PROTOCOL_VERSION = 1;

export function defaultSignalingUrl(location = window.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

export class SignalingClient extends Emitter {
  /**
   * A dead link is noticed within 3 s: a `ping` every second, and nothing at all heard for
   * `deadAfterMs` closes the connection (the call reconnects). "Nothing at all" counts what the
   * call's media connections receive too (`heardElsewhere`, set by call.js): on a weak link the
   * socket's TCP can stall for seconds behind lost segments while the relay's audio and RTCP
   * still arrive, and such a link is alive; then only `staleAfterMs` of silence on the socket
   * itself closes it. An attempt whose socket does not
   * even open within `openTimeoutMs` (a link still down) is given up, so that the next attempt
   * starts fresh as soon as the link is back rather than waiting out TCP's SYN back-off.
   * @param {{url: string, token: string, pingIntervalMs?: number, deadAfterMs?: number,
   *          staleAfterMs?: number, connectTimeoutMs?: number, openTimeoutMs?: number}} options
   */
  constructor({
    url,
    token,
    pingIntervalMs = 1000,
    deadAfterMs = 2500,
    staleAfterMs = 20000,
    connectTimeoutMs = 10000,
    openTimeoutMs = 2000,
  }) {
    super();
    this.openTimeoutMs = openTimeoutMs;
    this.url = url;
    this.token = token;
    this.pingIntervalMs = pingIntervalMs;
    this.deadAfterMs = deadAfterMs;
    this.staleAfterMs = staleAfterMs;
    /** When (performance.now()) anything else from the relay last arrived; 0: nothing yet. */
    this.heardElsewhere = () => 0;
    this.connectTimeoutMs = connectTimeoutMs;
    this.ws = null;
    this.identity = null; // {userId, role, socketId, protocolVersion}
    this.closed = false;
    this.lastError = null;
    this._lastHeard = 0;
    this._keepAlive = null;
  }

  /** Open the socket and authenticate; resolves with the `authenticated` data. */
  connect() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this._teardown(4000);
        reject(err);
      };
      const timer = setTimeout(
        () => fail(new AppError("CONNECTION_TIMEOUT", "no `authenticated` from the server in time")),
        this.connectTimeoutMs,
      );
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (err) {
        fail(new AppError("SERVER_UNREACHABLE", String(err), { cause: err }));
        return;
      }
      this.ws = ws;
      const openTimer = setTimeout(
        () => fail(new AppError("SERVER_UNREACHABLE", "the WebSocket did not open in time")),
        this.openTimeoutMs,
      );
      ws.addEventListener("open", () => {
        clearTimeout(openTimer);
        this._lastHeard = performance.now();
        this._sendRaw("authenticate", { token: this.token });
      });
      ws.addEventListener("message", (ev) => {
        this._lastHeard = performance.now();
        const msg = parse(ev.data);
        if (!msg) return;
        if (!settled) {
          if (msg.event === "authenticated") {
            settled = true;
            clearTimeout(timer);
            this.identity = msg.data ?? {};
            this._startKeepAlive();
            resolve(this.identity);
            return;
          }
          if (msg.event === "error") {
            const { code, message, details } = msg.data ?? {};
            fail(new AppError(code || "AUTHENTICATION_FAILED", message, { details }));
            return;
          }
        }
        if (msg.event === "error") this.lastError = msg.data ?? {};
        this.emit("message", msg.event, msg.data ?? {});
        this.emit(msg.event, msg.data ?? {});
      });
      ws.addEventListener("close", (ev) => {
        clearTimeout(openTimer);
        this._stopKeepAlive();
        if (!settled) {
          // 4401: token refused; 1006 before `open`: unreachable, or refused at upgrade (e.g. 429).
          const code = ev.code === 4401 ? "AUTHENTICATION_FAILED" : "SERVER_UNREACHABLE";
          fail(new AppError(code, `WebSocket closed (${ev.code}) before authentication`));
          return;
        }
        if (this.closed) return;
        this.closed = true;
        this.emit("close", { code: ev.code, reason: ev.reason, lastError: this.lastError });
      });
    });
  }

  /** Send `event` and wait for one of `expect` (or an `error`, which rejects). */
  request(event, data, { expect, timeoutMs = 10000 }) {
    const expected = Array.isArray(expect) ? expect : [expect];
    return new Promise((resolve, reject) => {
      const offs = [];
      const done = () => {
        clearTimeout(timer);
        for (const off of offs) off();
      };
      const timer = setTimeout(() => {
        done();
        reject(new AppError("CONNECTION_TIMEOUT", `no ${expected.join("/")} after ${event}`));
      }, timeoutMs);
      for (const name of expected) {
        offs.push(
          this.on(name, (payload) => {
            done();
            resolve(payload);
          }),
        );
      }
      offs.push(
        this.on("error", (err) => {
          done();
          reject(new AppError(err.code || "INTERNAL_ERROR", err.message, { details: err.details }));
        }),
      );
      offs.push(
        this.on("close", () => {
          done();
          reject(new AppError("SERVER_UNREACHABLE", `connection closed while waiting for ${expected[0]}`));
        }),
      );
      if (!this.send(event, data)) {
        done();
        reject(new AppError("SERVER_UNREACHABLE", "signaling connection is not open"));
      }
    });
  }

  /** Send one message; false when the socket isn't open. */
  send(event, data = {}) {
    return this._sendRaw(event, data);
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN && !this.closed;
  }

  /** Close on purpose (no `close` event is emitted for an intentional close). */
  close(code = 1000, reason = "bye") {
    this.closed = true;
    this._teardown(code, reason);
  }

  /** Test hook: drop the connection as a network failure would (the `close` event fires). */
  simulateDrop() {
    if (!this.ws) return;
    this.ws.close(4000, "simulated drop");
  }

  _sendRaw(event, data) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify({ event, data }));
    return true;
  }

  _startKeepAlive() {
    this._stopKeepAlive();
    let lastPing = 0;
    // checked twice a ping interval, so a silence is noticed at most half an interval late
    this._keepAlive = setInterval(() => {
      const now = performance.now();
      const silent = now - this._lastHeard;
      const linkSilent = now - this.heardElsewhere() > this.deadAfterMs;
      if (silent > this.deadAfterMs && (linkSilent || silent > this.staleAfterMs)) {
        // Nothing heard (not even a pong, nor any media) for too long: the connection is dead
        // even if the browser hasn't noticed yet. Report it as closed so the call reconnects.
        this._stopKeepAlive();
        this._teardown(4000, "keep-alive timeout");
        if (!this.closed) {
          this.closed = true;
          this.emit("close", { code: 4000, reason: "keep-alive timeout", lastError: null });
        }
        return;
      }
      if (now - lastPing >= this.pingIntervalMs - 10) {
        lastPing = now;
        this._sendRaw("ping", {});
      }
    }, this.pingIntervalMs / 2);
  }

  _stopKeepAlive() {
    if (this._keepAlive) clearInterval(this._keepAlive);
    this._keepAlive = null;
  }

  _teardown(code = 1000, reason = "") {
    this._stopKeepAlive();
    const ws = this.ws;
    if (!ws) return;
    try {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(code, reason);
    } catch {
      /* already closing */
    }
  }
}

function parse(raw) {
  if (typeof raw !== "string") return null;
  try {
    const msg = JSON.parse(raw);
    return msg && typeof msg.event === "string" ? msg : null;
  } catch {
    return null;
  }
}
