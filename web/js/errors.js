// Error codes from the REST API, the signaling WebSocket and the browser's media APIs, mapped to
// messages a client or a psychologist can act on. One table, so every screen says the same thing.

export class AppError extends Error {
  /**
   * @param {string} code   machine-readable code (API / WS code, or one of the client's own below)
   * @param {string} [message] technical message (logged; the UI shows describeError's text)
   * @param {{status?: number, details?: object, cause?: unknown}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "AppError";
    this.code = code;
    this.status = extra.status;
    this.details = extra.details ?? {};
    if (extra.cause) this.cause = extra.cause;
  }
}

const NOT_PARTICIPANT = {
  title: "You can't join this call",
  text: "You are not a participant of this session. Check that you are signed in with the account the session was booked with.",
  action: "signin",
};
const NOT_FOUND = {
  title: "Session not found",
  text: "We couldn't find this session. Please open the call from your Smiling Steps dashboard.",
  action: "none",
};
const SIGNED_OUT = {
  title: "Please sign in again",
  text: "Your sign-in is missing or has expired. Sign in to Smiling Steps again to join the call.",
  action: "signin",
};

/** code → {title, text, action} where action ∈ retry | signin | reload | none. */
const MESSAGES = {
  TOO_EARLY: {
    title: "Your session hasn't started yet",
    text: "You can join up to 15 minutes before the session starts.",
    action: "retry",
  },
  PAYMENT_PENDING: {
    title: "Payment not completed",
    text: "The payment for this session hasn't been confirmed yet. Once it is, you can join from this page.",
    action: "retry",
  },
  SESSION_NOT_CONFIRMED: {
    title: "Session not confirmed yet",
    text: "This session hasn't been confirmed by your psychologist yet, so the call isn't open.",
    action: "retry",
  },
  SESSION_EXPIRED: {
    title: "This session has ended",
    text: "The time window for this session has passed (calls stay open until 2 hours after the start time).",
    action: "none",
  },
  SESSION_CANCELLED: {
    title: "This session was cancelled",
    text: "This session was cancelled or declined, so there is no call to join.",
    action: "none",
  },
  SESSION_COMPLETED: {
    title: "This session is already completed",
    text: "This session's call has already ended.",
    action: "none",
  },
  NOT_A_VIDEO_CALL: {
    title: "This session isn't a video session",
    text: "This session was not booked as a video call. Please check your booking on Smiling Steps.",
    action: "none",
  },
  CALL_NOT_STARTED: {
    title: "The call hadn't started",
    text: "Nobody else joined, so there was no call to end and the session stays open.",
    action: "none",
  },
  CALL_ALREADY_ENDED: {
    title: "The call has already ended",
    text: "The other participant ended this call.",
    action: "none",
  },
  PERMISSION_DENIED: NOT_PARTICIPANT,
  FORBIDDEN: NOT_PARTICIPANT,
  NOT_PARTICIPANT,
  NOT_A_PARTICIPANT: NOT_PARTICIPANT,
  NOT_SESSION_PARTICIPANT: NOT_PARTICIPANT,
  ACCESS_DENIED: NOT_PARTICIPANT,
  SESSION_NOT_FOUND: NOT_FOUND,
  INVALID_SESSION: NOT_FOUND,
  INVALID_SESSION_ID: NOT_FOUND,
  ROOM_NOT_FOUND: NOT_FOUND,
  NOT_FOUND,
  ROOM_FULL: {
    title: "This call is full",
    text: "The maximum number of people are already in this call. If you think this is a mistake, ask your psychologist or Smiling Steps support.",
    action: "retry",
  },
  AUTHENTICATION_FAILED: SIGNED_OUT,
  UNAUTHORIZED: SIGNED_OUT,
  INVALID_TOKEN: SIGNED_OUT,
  TOKEN_EXPIRED: SIGNED_OUT,
  NO_TOKEN: SIGNED_OUT,
  RATE_LIMITED: {
    title: "Too many attempts",
    text: "Too many attempts in a short time. Please wait a minute, then try again.",
    action: "retry",
  },
  SERVER_UNREACHABLE: {
    title: "Can't reach the video server",
    text: "We couldn't connect to the Smiling Steps video server. Check your internet connection, then try again.",
    action: "retry",
  },
  CONNECTION_TIMEOUT: {
    title: "The connection timed out",
    text: "The video server didn't answer in time. Check your internet connection, then try again.",
    action: "retry",
  },
  CONNECTION_FAILED: {
    title: "Connection lost",
    text: "We couldn't reconnect you to the call. Check your internet connection, then try again.",
    action: "retry",
  },
  NEGOTIATION_FAILED: {
    title: "Your browser couldn't connect the video",
    text: "The video connection could not be set up. Try again, or use an up-to-date Chrome, Edge, Firefox or Safari.",
    action: "retry",
  },
  REPLACED: {
    title: "You joined from somewhere else",
    text: "This call was opened in another tab or on another device, so it was closed here.",
    action: "reload",
  },
  CAMERA_DENIED: {
    title: "Camera and microphone are blocked",
    text: "Your browser isn't allowing this page to use your camera and microphone. Click the camera icon in the address bar, choose \"Allow\", then try again.",
    action: "retry",
  },
  NO_DEVICE: {
    title: "No camera or microphone found",
    text: "We couldn't find a camera or microphone. Connect one (or check that it is switched on), then try again.",
    action: "retry",
  },
  DEVICE_IN_USE: {
    title: "Camera or microphone is busy",
    text: "Another app is using your camera or microphone. Close it, then try again.",
    action: "retry",
  },
  SCREEN_SHARE_FAILED: {
    title: "Screen sharing didn't start",
    text: "Your screen couldn't be shared. You can try again.",
    action: "none",
  },
  UNSUPPORTED_BROWSER: {
    title: "This browser can't make video calls",
    text: "Please open the link in an up-to-date Chrome, Edge, Firefox or Safari, over https.",
    action: "none",
  },
  E2EE_UNSUPPORTED: {
    title: "This browser can't encrypt the call end to end",
    text: "This service requires end-to-end encrypted calls. Please join from an up-to-date Chrome, Edge or Firefox.",
    action: "none",
  },
  VALIDATION_ERROR: {
    title: "Something went wrong",
    text: "The request was not accepted. Please reload the page and try again.",
    action: "reload",
  },
  SERVICE_UNAVAILABLE: {
    title: "The video service is busy",
    text: "The video service is temporarily unavailable. Please try again in a moment.",
    action: "retry",
  },
  INTERNAL_ERROR: {
    title: "Something went wrong on our side",
    text: "The video service had a problem. Please try again in a moment.",
    action: "retry",
  },
};

const GENERIC = {
  title: "Something went wrong",
  text: "An unexpected error occurred. Please try again.",
  action: "retry",
};

/** Codes after which reconnecting again can never succeed. */
export const FATAL_CODES = new Set([
  "PERMISSION_DENIED",
  "FORBIDDEN",
  "NOT_PARTICIPANT",
  "NOT_A_PARTICIPANT",
  "NOT_A_VIDEO_CALL",
  "SESSION_COMPLETED",
  "INVALID_SESSION_ID",
  "SESSION_EXPIRED",
  "SESSION_CANCELLED",
  "SESSION_NOT_FOUND",
  "INVALID_SESSION",
  "ROOM_NOT_FOUND",
  "AUTHENTICATION_FAILED",
  "UNAUTHORIZED",
  "TOKEN_EXPIRED",
  "REPLACED",
  "PAYMENT_PENDING",
  "SESSION_NOT_CONFIRMED",
  "E2EE_UNSUPPORTED",
]);

/** Is `s` a machine code like PAYMENT_PENDING rather than a sentence? */
export function looksLikeCode(s) {
  return typeof s === "string" && /^[A-Z][A-Z0-9_]+$/.test(s);
}

/**
 * The human title/text/action for an error code. `serverMessage` is shown only for codes we don't
 * know (it is the server's own human message, better than a generic one).
 */
export function describeError(code, serverMessage) {
  const known = MESSAGES[code];
  if (known) return { code, ...known };
  if (serverMessage && !looksLikeCode(serverMessage)) {
    return { code, title: GENERIC.title, text: serverMessage, action: "retry" };
  }
  return { code: code || "UNKNOWN", ...GENERIC };
}

/** Map a getUserMedia / getDisplayMedia DOMException to an AppError. */
export function mediaError(err, { screen = false } = {}) {
  if (err instanceof AppError) return err;
  const name = err?.name ?? "";
  if (screen) return new AppError("SCREEN_SHARE_FAILED", `${name}: ${err?.message ?? ""}`, { cause: err });
  if (name === "NotAllowedError" || name === "PermissionDeniedError" || name === "SecurityError") {
    return new AppError("CAMERA_DENIED", err.message, { cause: err });
  }
  if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") {
    return new AppError("NO_DEVICE", err.message, { cause: err });
  }
  if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") {
    return new AppError("DEVICE_IN_USE", err.message, { cause: err });
  }
  if (name === "TypeError") return new AppError("UNSUPPORTED_BROWSER", err.message, { cause: err });
  return new AppError("INTERNAL_ERROR", `${name}: ${err?.message ?? err}`, { cause: err });
}
