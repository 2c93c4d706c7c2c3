// The REST API (docs/api.md): every call sends the platform JWT as `x-auth-token` and unwraps the
// `{success, data}` / `{success: false, error: {code, message, details}}` envelope.

import { AppError } from "./errors.js";

const STATUS_CODES = {
  401: "AUTHENTICATION_FAILED",
  403: "PERMISSION_DENIED",
  404: "SESSION_NOT_FOUND",
  429: "RATE_LIMITED",
  502: "SERVER_UNREACHABLE",
  503: "SERVER_UNREACHABLE",
  504: "SERVER_UNREACHABLE",
};

export class ApiClient {
  constructor({ token, baseUrl = "", timeoutMs = 15000 }) {
    this.token = token;
    this.baseUrl = baseUrl;
    this.timeoutMs = timeoutMs;
  }

  /** One retry after a network error: a Wi-Fi hand-over or a network change aborts requests. */
  async request(method, path, body) {
    try {
      return await this._request(method, path, body);
    } catch (err) {
      if (err.code !== "SERVER_UNREACHABLE" || err.status !== undefined) throw err;
      await new Promise((resolve) => setTimeout(resolve, 700));
      return this._request(method, path, body);
    }
  }

  async _request(method, path, body) {
    const headers = { Accept: "application/json", "x-auth-token": this.token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeoutMs);
    let response;
    try {
      response = await fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "same-origin",
        signal: controller.signal,
      });
    } catch (err) {
      throw new AppError("SERVER_UNREACHABLE", `${method} ${path}: ${err?.message ?? err}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      payload = null;
    }
    if (!response.ok || !payload || payload.success === false) {
      const error = payload?.error ?? {};
      const code =
        error.code ?? STATUS_CODES[response.status] ?? (response.status >= 500 ? "INTERNAL_ERROR" : "UNKNOWN");
      throw new AppError(code, error.message ?? `${method} ${path} → HTTP ${response.status}`, {
        status: response.status,
        details: error.details,
      });
    }
    return payload.data ?? payload;
  }

  /** {iceServers: [...]} */
  config() {
    return this.request("GET", "/api/video-calls/config");
  }

  /** {canJoin, reason, minutesUntilSession, sessionStatus, paymentStatus, timeWindow?} */
  canJoin(sessionId) {
    return this.request("GET", `/api/video-calls/can-join/${encodeURIComponent(sessionId)}`);
  }

  /** {roomId, sessionId, sessionDate, participants: {client: {id, name}, psychologist: {id, name}}} */
  generateRoom(sessionId) {
    return this.request("POST", `/api/video-calls/generate-room/${encodeURIComponent(sessionId)}`, {});
  }

  /** {message, session: {id, status, videoCallStarted}} */
  start(sessionId) {
    return this.request("POST", `/api/video-calls/start/${encodeURIComponent(sessionId)}`, {});
  }

  /** {message, rating: {rating, reasons, role, ratedAt}}; 409 ALREADY_RATED for a second one. */
  rate(sessionId, rating, reasons = []) {
    return this.request("POST", `/api/video-calls/rating/${encodeURIComponent(sessionId)}`, { rating, reasons });
  }

  /** {message, duration, session: {status, callDuration, videoCallEnded}} */
  end(sessionId, endTime = new Date()) {
    const body = endTime ? { endTime: endTime.toISOString() } : {};
    return this.request("POST", `/api/video-calls/end/${encodeURIComponent(sessionId)}`, body);
  }
}
