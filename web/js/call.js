// The call, end to end: can-join → config → generate-room → camera/microphone → WebSocket join →
// publisher / subscriber connections → start; end call → leave-room → POST end → summary.
// Also the waiting room's re-checks and automatic reconnection when the WebSocket or ICE drops.
//
// CallSession holds the state and emits events; the ui/ modules only render it.

import { AppError, FATAL_CODES, looksLikeCode } from "./errors.js";
import { E2eeSession, canEncryptFrames } from "./e2ee.js";
import { Emitter, delay } from "./events.js";
import { LocalMedia } from "./media.js";
import { PublisherConnection, SubscriberConnection, rtcConfiguration } from "./peer.js";
import { QualityMonitor } from "./quality.js";
import { SignalingClient } from "./signaling.js";

/** Phases: checking, waiting, preparing, connecting, connected, reconnecting, failed, ending, ended, error. */
export const CONNECTION_PHASES = new Set(["connecting", "connected", "reconnecting", "failed"]);

const JOIN_EARLY_MINUTES = 15;
const RECHECK_MS = 30000;
// Retries come quickly while the relay holds our seat (SEAT_GRACE_SECONDS, 60 s by default):
// a dead link makes each attempt fail fast (signaling.js' open timeout), so a fresh one is
// under way within a second of the link returning. Later, the back-off spaces them out.
const RECONNECT_BACKOFF_MS = [0, 250, 500, ...Array(55).fill(1000), 2000, 4000, 8000, 15000, 20000];
const RECONNECT_GIVE_UP_MS = 120000;
const ICE_DISCONNECTED_GRACE_MS = 3000;
// Nothing at all received from participants who say they are sending, while ICE claims to be
// connected (e.g. the browser switched to another network path the relay doesn't follow).
const MEDIA_STALL_MS = 12000;
const MEDIA_STALL_MIN_INTERVAL_MS = 60000;
// The relay answers our publisher with RTCP every second (receiver reports, REMB) and sends our
// subscriber sender reports: nothing at all arriving on either connection for this long while
// we publish means the link to the relay is dead, whatever ICE says (its consent takes ~30 s).
const RELAY_SILENCE_MS = 2000;
const RELAY_WATCH_MS = 500;
const PUBLISHER_CONNECT_TIMEOUT_MS = 15000;

export const ROLE_LABELS = { client: "Client", psychologist: "Psychologist", admin: "Admin" };

/** A can-join `reason` (a code, or a sentence from an older server) → an error code. */
export function reasonCode(canJoin) {
  const reason = canJoin?.reason;
  if (looksLikeCode(reason)) return reason;
  const text = String(reason ?? "").toLowerCase();
  if (/too early|not started|hasn.t started|before/.test(text)) return "TOO_EARLY";
  if (typeof canJoin?.minutesUntilSession === "number" && canJoin.minutesUntilSession > JOIN_EARLY_MINUTES) {
    return "TOO_EARLY";
  }
  if (/payment/.test(text)) return "PAYMENT_PENDING";
  if (/confirm/.test(text)) return "SESSION_NOT_CONFIRMED";
  if (/expired|ended|passed|too late/.test(text)) return "SESSION_EXPIRED";
  if (/cancel|declin/.test(text)) return "SESSION_CANCELLED";
  if (/participant|authori|permission|allowed/.test(text)) return "PERMISSION_DENIED";
  return "CANNOT_JOIN";
}

export class CallSession extends Emitter {
  /**
   * @param {{sessionId: string, token: string, claims: object|null, api: import('./api.js').ApiClient,
   *          signalingUrl: string, relayOnly?: boolean}} options
   */
  constructor({ sessionId, token, claims, api, signalingUrl, relayOnly = false }) {
    super();
    this.sessionId = sessionId;
    this.token = token;
    this.api = api;
    this.signalingUrl = signalingUrl;
    this.relayOnly = relayOnly;
    this.e2eePolicy = "preferred"; // from /config: required | preferred | off
    this.e2ee = null; // E2eeSession of the current connection (null when the policy is off)
    this.exposeE2eeKeys = false; // tests only: ?e2eeTestKeys=1
    this.phase = "idle";
    this.error = null; // the blocking error (phase "error")
    this.lastErrorCode = null; // the most recent error code of any kind
    this.waiting = null; // {opensAt, startsAt, canJoin}
    this.room = null; // generate-room data
    this.iceServers = [];
    this.local = { socketId: null, userId: claims?.userId ?? null, role: claims?.role ?? null, name: "You" };
    this.participants = new Map(); // socketId → remote participant
    this.media = new LocalMedia();
    this.signaling = null;
    this.publisher = null;
    this.subscriber = null;
    this.startedAt = null; // Date the call started (server's videoCallStarted when known)
    this.connectedAt = null;
    this.summary = null;
    this.reconnects = 0;
    this.maxParticipants = null;
    this.clockSkewMs = 0; // browser clock minus server clock (from can-join's currentTime)
    this._generation = 0; // bumps on every (re)connect; stale callbacks check it
    this._reconnecting = false;
    this._recheckTimer = null;
    this._disconnectTimers = new Map();
    this._startRequested = false;
    this._log = [];
    this.quality = new QualityMonitor(
      () => [this.publisher?.pc, this.subscriber?.pc],
      () => [...this.participants.values()].some((p) => p.media?.video !== false && p.tracks?.video),
    );
    this.quality.on("sample", (q) => {
      this._watchInboundMedia(q);
      this.emit("quality", q);
    });
    this._inbound = { packets: -1, since: 0 };
    this._relayBytes = { bytes: -1, since: 0, rising: false };
    this._relayWatch = null;
    this._inboundAt = 0; // performance.now() of the last byte from the relay on a media connection
    this._lastStallReconnect = 0;
    this.media.on("change", () => this._onLocalMediaChange());
    this.media.on("video-track", (track) => void this.publisher?.setVideoTrack(track));
  }

  // ---------------------------------------------------------------- flow

  /** Run the flow from can-join (also the "Try again" of the error screen). */
  async begin() {
    this.error = null;
    clearTimeout(this._recheckTimer);
    // A re-check from the waiting room stays on the waiting room until it may join.
    if (this.phase !== "waiting") this._setPhase("checking");
    try {
      const canJoin = await this.api.canJoin(this.sessionId);
      const serverNow = parseDate(canJoin?.currentTime);
      if (serverNow) this.clockSkewMs = Date.now() - serverNow.getTime();
      if (!canJoin?.canJoin) {
        const code = reasonCode(canJoin);
        if (code === "TOO_EARLY") {
          // The room can be prepared ahead of the window: it names who the session is with.
          if (!this.room) {
            this.room = await this.api.generateRoom(this.sessionId).catch(() => null);
            if (this.room) {
              this._resolveLocalName();
              this.emit("room", this.room);
            }
          }
          this._enterWaitingRoom(canJoin);
          return;
        }
        throw new AppError(code, typeof canJoin?.reason === "string" ? canJoin.reason : code, {
          details: canJoin,
        });
      }
      const [config, room] = await Promise.all([
        this.api.config(),
        this.room ? Promise.resolve(this.room) : this.api.generateRoom(this.sessionId),
      ]);
      this.iceServers = config?.iceServers ?? [];
      this.e2eePolicy = ["required", "preferred", "off"].includes(config?.e2ee) ? config.e2ee : "preferred";
      if (this.e2eePolicy === "required" && !canEncryptFrames()) {
        throw new AppError("E2EE_UNSUPPORTED", "this browser cannot encrypt media end to end (RTCRtpScriptTransform)");
      }
      this.room = room;
      this._resolveLocalName();
      this.emit("room", room);
      if (!this.media.audioTrack && !this.media.cameraTrack) {
        this._setPhase("preparing");
        await this.media.acquire();
        if (this.media.notice) this._announce(this.media.notice === "NO_CAMERA"
          ? "No camera found: you are joining with your microphone only."
          : "No microphone found: you are joining with your camera only.");
      }
      await this._connect(false);
    } catch (err) {
      this._fail(err);
    }
  }

  _enterWaitingRoom(canJoin) {
    const now = Date.now();
    // Server times are shifted by the server-to-browser clock difference, so a wrong computer
    // clock doesn't show a wrong countdown.
    const serverNow = parseDate(canJoin.currentTime);
    const skew = serverNow ? now - serverNow.getTime() : 0;
    this.clockSkewMs = skew;
    const local = (value) => {
      const d = parseDate(value);
      return d ? new Date(d.getTime() + skew) : null;
    };
    const minutes = typeof canJoin.minutesUntilSession === "number" ? canJoin.minutesUntilSession : null;
    const startsAt = local(canJoin.sessionDate) ?? (minutes == null ? null : new Date(now + minutes * 60000));
    const opensAt =
      local(canJoin.timeWindow?.allowedFrom) ??
      (startsAt && new Date(startsAt.getTime() - JOIN_EARLY_MINUTES * 60000));
    this.waiting = { opensAt, startsAt, canJoin };
    this.lastErrorCode = "TOO_EARLY";
    this._setPhase("waiting", { force: true });
    const untilOpen = opensAt ? opensAt.getTime() - now : RECHECK_MS;
    this._recheckTimer = setTimeout(() => void this.begin(), Math.max(1000, Math.min(RECHECK_MS, untilOpen + 500)));
  }

  /** Check again now (the waiting room's button and its countdown reaching zero). */
  recheck() {
    if (this.phase === "waiting" || this.phase === "error") void this.begin();
  }

  async _connect(isReconnect) {
    const generation = ++this._generation;
    this._setPhase(isReconnect ? "reconnecting" : "connecting");
    const signaling = new SignalingClient({ url: this.signalingUrl, token: this.token });
    this.signaling = signaling;
    this._wireSignaling(signaling, generation);
    const identity = await signaling.connect();
    if (generation !== this._generation) throw new AppError("CANCELLED", "superseded");
    this.local.socketId = identity.socketId ?? null;
    this.local.weakVideo = null; // a new seat: the relay judges its links afresh (audio first)
    this.local.userId = identity.userId ?? this.local.userId;
    this.local.role = identity.role ?? this.local.role;
    this._resolveLocalName();
    const e2ee = await this._startE2ee(signaling, generation);

    const joined = await signaling.request("join-room", { roomId: this.room.roomId }, { expect: "room-joined" });
    if (generation !== this._generation) throw new AppError("CANCELLED", "superseded");
    this.maxParticipants = joined.maxParticipants ?? null;
    this.participants = new Map();
    for (const p of joined.participants ?? []) this._addParticipant(p);
    this._emitParticipants();
    e2ee?.setPeers(joined.participants ?? []);

    const rtcConfig = rtcConfiguration(this.iceServers, { relayOnly: this.relayOnly });
    const publisher = new PublisherConnection({ rtcConfig, signaling, e2ee });
    this.publisher = publisher;
    publisher.on("state", (state) => this._onIceState("publisher", state, generation));
    const connected = waitConnected(publisher, PUBLISHER_CONNECT_TIMEOUT_MS);
    connected.catch(() => {});
    await publisher.start({
      audio: this.media.audioTrack,
      video: this.media.outgoingVideoTrack(),
      stream: new MediaStream([this.media.audioTrack, this.media.cameraTrack].filter(Boolean)),
    });
    signaling.send("media-state", this.media.state());
    await connected;
    if (generation !== this._generation) throw new AppError("CANCELLED", "superseded");

    this.connectedAt = new Date();
    if (!this.startedAt) this.startedAt = this.connectedAt;
    if (isReconnect) this.reconnects += 1;
    this._setPhase("connected");
    this._announce(isReconnect ? "Reconnected." : "You are in the call.");
    this.quality.start();
    this._watchRelayLink(generation);
    this._maybeStartCall();
  }

  /**
   * Reconnect when nothing at all (RTP, RTCP, STUN) arrives from the relay for 2 s. What does
   * arrive also keeps the signaling socket's own dead-link watch from firing on a link that is
   * weak but alive (its TCP stalls behind lost segments while audio and RTCP still come), and
   * ICE's "disconnected" (STUN checks lost on a congested link) from ending such a call.
   */
  _watchRelayLink(generation) {
    clearInterval(this._relayWatch);
    this._relayBytes = { bytes: -1, since: Date.now(), rising: false };
    this._inboundAt = 0;
    const signaling = this.signaling;
    if (signaling) signaling.heardElsewhere = () => (generation === this._generation ? this._inboundAt : 0);
    this._relayWatch = setInterval(async () => {
      if (generation !== this._generation || this.phase !== "connected") return;
      const bytes = await bytesFromRelay([this.publisher?.pc, this.subscriber?.pc]);
      if (generation !== this._generation || bytes == null) return;
      const now = Date.now();
      const seen = this._relayBytes;
      if (bytes !== seen.bytes) {
        // armed once the relay has been heard twice: a connection still starting says nothing
        this._relayBytes = { bytes, since: now, rising: seen.bytes >= 0 };
        if (seen.bytes >= 0) this._inboundAt = performance.now();
      } else if (seen.rising && now - seen.since >= RELAY_SILENCE_MS) {
        this._relayBytes = { bytes: -1, since: now, rising: false };
        void this._reconnect("nothing received from the relay");
      }
    }, RELAY_WATCH_MS);
  }

  /** The connection's key exchange (a new key pair per connection); null when the policy is off. */
  async _startE2ee(signaling, generation) {
    this.e2ee?.close();
    this.e2ee = null;
    if (this.e2eePolicy === "off") {
      this.emit("e2ee", null);
      return null;
    }
    const e2ee = new E2eeSession({
      policy: this.e2eePolicy,
      signaling,
      socketId: this.local.socketId,
      exposeKeys: this.exposeE2eeKeys,
    });
    await e2ee.start();
    if (generation !== this._generation) {
      e2ee.close();
      throw new AppError("CANCELLED", "superseded");
    }
    this.e2ee = e2ee;
    e2ee.on("change", (state) => this.emit("e2ee", state));
    e2ee.on("code-changed", () => {
      this._announce("The security code changed. Compare the new code with the others in the call.");
      this.emit("notice", { kind: "info", text: "The security code changed: compare the new code with the others." });
    });
    signaling.on("e2ee-key", (data) => {
      if (generation === this._generation) void e2ee.handleMessage(data);
    });
    this.emit("e2ee", e2ee.state());
    return e2ee;
  }

  _wireSignaling(signaling, generation) {
    const current = () => generation === this._generation && this.signaling === signaling;
    signaling.on("user-joined", (p) => {
      if (!current()) return;
      // A participant taking back its held seat (a reconnect) replaces its old entry.
      const back = p.previousSocketId ? this.participants.get(p.previousSocketId) : null;
      if (p.previousSocketId) {
        this.participants.delete(p.previousSocketId);
        this.e2ee?.peerLeft(p.previousSocketId);
      }
      this._addParticipant(p);
      this._emitParticipants();
      this.e2ee?.peerJoined(p);
      const name = displayName(this.participants.get(p.socketId));
      this._announce(back ? `${name} is back.` : `${name} joined the call.`);
      this._maybeStartCall();
    });
    signaling.on("user-reconnecting", ({ socketId }) => {
      // Their connection dropped; the relay holds their seat (user-left follows if they don't return).
      if (!current()) return;
      const p = this.participants.get(socketId);
      if (!p) return;
      p.reconnecting = true;
      p.tracks = { audio: null, video: null };
      this._emitParticipants();
      this._log.push({ at: Date.now(), event: "peer-reconnecting", socketId });
      this._announce(`${displayName(p)} is reconnecting…`);
      this.emit("notice", { kind: "info", text: `${displayName(p)} is reconnecting…` });
    });
    signaling.on("user-left", ({ socketId, reason }) => {
      if (!current()) return;
      const p = this.participants.get(socketId);
      if (!p) return;
      this._log.push({ at: Date.now(), event: "peer-left", socketId, reason });
      this.participants.delete(socketId);
      this._emitParticipants();
      this.e2ee?.peerLeft(socketId);
      if (reason !== "replaced") {
        const why = reason === "left" ? "left the call" : "lost their connection";
        this._announce(`${displayName(p)} ${why}.`);
        this.emit("notice", { kind: "left", text: `${displayName(p)} ${why}.` });
      }
    });
    signaling.on("media-state", (m) => {
      if (!current()) return;
      const p = this.participants.get(m.socketId);
      if (!p) return;
      const before = p.media;
      p.media = { audio: Boolean(m.audio), video: Boolean(m.video), screen: Boolean(m.screen) };
      this._emitParticipants();
      if (before.screen !== p.media.screen) {
        this._announce(`${displayName(p)} ${p.media.screen ? "started" : "stopped"} sharing their screen.`);
      } else if (before.audio !== p.media.audio) {
        this._announce(`${displayName(p)} ${p.media.audio ? "unmuted" : "muted"} their microphone.`);
      } else if (before.video !== p.media.video) {
        this._announce(`${displayName(p)} turned their camera ${p.media.video ? "on" : "off"}.`);
      }
    });
    // Audio first (docs/signaling.md): a video paused on a weak link, or back.
    signaling.on("video-paused", (m) => current() && this._videoGate(m, true));
    signaling.on("video-resumed", (m) => current() && this._videoGate(m, false));
    signaling.on("offer", ({ offer, target, tracks }) => {
      if (!current() || target !== "subscriber") return;
      this._ensureSubscriber(signaling, generation).handleOffer(offer, tracks);
    });
    signaling.on("answer", ({ answer, target }) => {
      if (current() && target === "publisher") void this.publisher?.handleAnswer(answer);
    });
    signaling.on("ice-candidate", ({ candidate, target }) => {
      if (!current()) return;
      const conn = target === "publisher" ? this.publisher : this.subscriber;
      void conn?.addRemoteCandidate(candidate);
    });
    signaling.on("tracks", ({ tracks }) => {
      if (current() && Array.isArray(tracks)) this._ensureSubscriber(signaling, generation).setTrackMap(tracks);
    });
    signaling.on("call-ended", (data) => {
      // Someone ended the call (or the server did): the relay closes this socket next (4000).
      if (current()) this._endedElsewhere(data);
    });
    signaling.on("error", (err) => {
      if (!current()) return;
      this.lastErrorCode = err.code ?? "INTERNAL_ERROR";
      if (err.code === "REPLACED") {
        this._fail(new AppError("REPLACED", err.message));
        return;
      }
      // Errors answering a request are handled by whoever awaits it; others are shown briefly.
      if (this.phase === "connected") this.emit("notice", { kind: "error", code: err.code, text: err.message });
    });
    signaling.on("close", ({ code, lastError }) => {
      if (!current()) return;
      if (lastError?.code === "REPLACED" || code === 4409) {
        this._fail(new AppError("REPLACED", "replaced by another connection"));
        return;
      }
      void this._reconnect(`signaling closed (${code})`);
    });
  }

  _ensureSubscriber(signaling, generation) {
    if (this.subscriber && !this.subscriber.closed) return this.subscriber;
    const subscriber = new SubscriberConnection({
      rtcConfig: rtcConfiguration(this.iceServers, { relayOnly: this.relayOnly }),
      signaling,
      e2ee: this.e2ee,
    });
    this.subscriber = subscriber;
    subscriber.on("state", (state) => this._onIceState("subscriber", state, generation));
    subscriber.on("tracks", (groups) => {
      if (generation !== this._generation) return;
      for (const p of this.participants.values()) p.tracks = groups.get(p.socketId) ?? { audio: null, video: null };
      this._emitParticipants();
    });
    subscriber.on("negotiation-error", (err) => {
      this.lastErrorCode = err.code;
      this.emit("notice", { kind: "error", code: err.code, text: err.message });
    });
    return subscriber;
  }

  _onIceState(which, state, generation) {
    if (generation !== this._generation) return;
    this._log.push({ at: Date.now(), event: "ice", which, state });
    this.emit("ice", { which, state });
    clearTimeout(this._disconnectTimers.get(which));
    if (state === "failed") {
      void this._reconnect(`${which} ICE failed`);
    } else if (state === "disconnected" && this.phase === "connected") {
      // ICE often recovers from "disconnected" by itself; give it a moment first.
      this._awaitIceRecovery(which, generation);
    }
  }

  /** Reconnect a connection ICE calls "disconnected" unless it recovers, or the relay's media
   * still arrives (its STUN checks lost on a congested link, not a dead one: the 2 s watch on
   * every byte from the relay ends the call's connections if that stops too). */
  _awaitIceRecovery(which, generation) {
    this._disconnectTimers.set(
      which,
      setTimeout(() => {
        const conn = which === "publisher" ? this.publisher : this.subscriber;
        if (generation !== this._generation || conn?.state !== "disconnected") return;
        if (this._inboundAt && performance.now() - this._inboundAt < RELAY_SILENCE_MS) {
          this._awaitIceRecovery(which, generation);
        } else {
          void this._reconnect(`${which} ICE disconnected`);
        }
      }, ICE_DISCONNECTED_GRACE_MS),
    );
  }

  async _reconnect(why) {
    // Only a call that was up reconnects; the first attempt's own error handling decides otherwise.
    if (this._reconnecting || this.phase !== "connected") return;
    console.info(`[smiling] reconnecting: ${why}`);
    this._log.push({ at: Date.now(), event: "reconnect", why });
    this._announce("Connection lost. Reconnecting…");
    await this._reconnectLoop();
  }

  async _reconnectLoop() {
    this._reconnecting = true;
    this._teardownConnections();
    this._setPhase("reconnecting");
    const deadline = Date.now() + RECONNECT_GIVE_UP_MS;
    try {
      for (let attempt = 0; ; attempt += 1) {
        await this._waitBeforeRetry(RECONNECT_BACKOFF_MS[Math.min(attempt, RECONNECT_BACKOFF_MS.length - 1)]);
        if (!CONNECTION_PHASES.has(this.phase)) return; // ended meanwhile
        try {
          await this._connect(true);
          return;
        } catch (err) {
          const code = err?.code ?? "INTERNAL_ERROR";
          this.lastErrorCode = code;
          this._teardownConnections();
          if (!CONNECTION_PHASES.has(this.phase)) return;
          if (FATAL_CODES.has(code) || code === "ROOM_FULL") {
            this._fail(err);
            return;
          }
          if (Date.now() > deadline) {
            this.lastErrorCode = "CONNECTION_FAILED";
            this._setPhase("failed");
            this._announce("We couldn't reconnect you to the call.");
            return;
          }
          this._setPhase("reconnecting");
        }
      }
    } finally {
      this._reconnecting = false;
    }
  }

  /** Back-off that ends early when the browser comes back online. */
  _waitBeforeRetry(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        window.removeEventListener("online", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      window.addEventListener("online", done);
    });
  }

  /** "Try again" after reconnecting gave up. */
  retryConnection() {
    if (this.phase === "failed" && !this._reconnecting) void this._reconnectLoop();
  }

  /** POST start once both sides are in (first start wins on the server; both sides call it). */
  _maybeStartCall() {
    if (this._startRequested || this.phase !== "connected" || this.participants.size === 0) return;
    this._startRequested = true;
    void this._startCall();
  }

  async _startCall() {
    for (const wait of [0, 2000, 5000, 10000]) {
      if (wait) await delay(wait);
      if (this.phase === "ending" || this.phase === "ended" || this.phase === "error") return;
      try {
        const result = await this.api.start(this.sessionId);
        const serverStart = parseDate(result?.session?.videoCallStarted);
        // Align the timer with the server's start time, so both sides show the same duration.
        const started = serverStart && new Date(serverStart.getTime() + this.clockSkewMs);
        if (started && started.getTime() <= Date.now() + 5000) {
          this.startedAt = started;
          this.emit("timer", this.startedAt);
        }
        return;
      } catch (err) {
        console.warn("[smiling] start call:", err.code, err.message);
        // A refusal (e.g. CALL_ALREADY_ENDED) is final; a network hiccup is retried.
        if (!["SERVER_UNREACHABLE", "INTERNAL_ERROR", "RATE_LIMITED", "SERVICE_UNAVAILABLE"].includes(err.code)) {
          return;
        }
      }
    }
    this._startRequested = false; // try again on the next join or reconnect
  }

  // ---------------------------------------------------------------- controls

  toggleAudio() {
    this.media.setAudioEnabled(!this.media.audioEnabled);
  }

  async toggleVideo() {
    try {
      await this.media.setVideoEnabled(!this.media.videoEnabled);
    } catch (err) {
      this.lastErrorCode = err.code;
      this.emit("notice", { kind: "error", code: err.code });
    }
  }

  async toggleScreenShare() {
    try {
      if (this.media.sharing) await this.media.stopScreenShare();
      else await this.media.startScreenShare();
    } catch (err) {
      this.lastErrorCode = err.code ?? "SCREEN_SHARE_FAILED";
      this.emit("notice", { kind: "error", code: this.lastErrorCode });
    }
  }

  _onLocalMediaChange() {
    if (this.signaling?.isOpen && this.phase === "connected") this.signaling.send("media-state", this.media.state());
    this.emit("media", this.media.state());
  }

  /** End the call: leave the room, release the devices, POST end, show the summary. */
  async end() {
    if (this.phase === "ending" || this.phase === "ended") return;
    const endedAt = new Date();
    const startedAt = this.startedAt;
    const wasInCall = CONNECTION_PHASES.has(this.phase);
    clearTimeout(this._recheckTimer);
    this._setPhase("ending");
    const signaling = this.signaling;
    if (signaling?.isOpen && this.room) {
      await signaling
        .request("leave-room", { roomId: this.room.roomId }, { expect: "room-left", timeoutMs: 1500 })
        .catch(() => {});
    }
    this._teardownConnections();
    this.media.stop();
    this.participants.clear();
    let result = null;
    let error = null;
    if (wasInCall) {
      try {
        try {
          result = await this.api.end(this.sessionId, new Date(endedAt.getTime() - this.clockSkewMs));
        } catch (err) {
          // The clocks disagree more than we measured: let the server use its own time.
          if (err.code !== "INVALID_END_TIME") throw err;
          result = await this.api.end(this.sessionId, null);
        }
      } catch (err) {
        error = err;
        this.lastErrorCode = err.code;
      }
    }
    this._showSummary({
      startedAt,
      endedAt,
      minutes: result?.duration ?? result?.session?.callDuration ?? null,
      status: result?.session?.status ?? null,
      error,
      wasInCall,
      endedBy: null,
    });
  }

  /** The call was ended by someone else (`call-ended`): the same summary, no POST end. */
  _endedElsewhere(data) {
    if (this.phase === "ending" || this.phase === "ended") return;
    const endedAt = new Date();
    const startedAt = this.startedAt;
    const wasInCall = CONNECTION_PHASES.has(this.phase);
    clearTimeout(this._recheckTimer);
    this._setPhase("ending");
    this._teardownConnections(); // before the relay's close arrives: it must not reconnect
    this.media.stop();
    this.participants.clear();
    this._showSummary({
      startedAt,
      endedAt,
      minutes: data?.durationMinutes ?? null,
      status: "Completed",
      error: null,
      wasInCall,
      endedBy: data?.endedBy ?? null,
    });
  }

  _showSummary({ startedAt, endedAt, minutes, status, error, wasInCall, endedBy }) {
    this.summary = {
      seconds: startedAt ? Math.max(0, Math.round((endedAt - startedAt) / 1000)) : 0,
      minutes,
      status,
      endedAt,
      error,
      // Who ended it when it was not this user ({userId, role}; role "server" for the server).
      endedBy,
      // Only a call that took place can be rated (the server refuses the others).
      rateable: wasInCall && startedAt != null,
    };
    this._setPhase("ended");
    this._announce(endedBy ? `The call was ended by ${endedByWords(endedBy)}.` : "The call has ended.");
  }

  /** Leave quietly when the page goes away (a reload rejoins; it does not end the session). */
  leaveOnUnload() {
    if (this.signaling?.isOpen && this.room) this.signaling.send("leave-room", { roomId: this.room.roomId });
    this._teardownConnections();
  }

  // ---------------------------------------------------------------- helpers

  /** Reconnect when media stopped arriving although ICE says the connection is fine. */
  _watchInboundMedia(sample) {
    const now = Date.now();
    const sending = [...this.participants.values()].some(
      (p) => (p.tracks?.audio || p.tracks?.video) && (p.media?.audio || p.media?.video),
    );
    const packets = sample.packetsReceived ?? 0;
    if (!sending || this.phase !== "connected" || this.subscriber?.state !== "connected") {
      this._inbound = { packets, since: now };
      return;
    }
    if (packets !== this._inbound.packets) {
      this._inbound = { packets, since: now };
      return;
    }
    if (now - this._inbound.since >= MEDIA_STALL_MS && now - this._lastStallReconnect >= MEDIA_STALL_MIN_INTERVAL_MS) {
      this._lastStallReconnect = now;
      this._inbound = { packets: -1, since: now };
      void this._reconnect("no media received");
    }
  }

  _teardownConnections() {
    this._generation += 1;
    clearInterval(this._relayWatch);
    this._relayWatch = null;
    for (const timer of this._disconnectTimers.values()) clearTimeout(timer);
    this._disconnectTimers.clear();
    this.quality.stop();
    this.publisher?.close();
    this.subscriber?.close();
    this.signaling?.close();
    this.e2ee?.close();
    this.publisher = this.subscriber = this.signaling = this.e2ee = null;
  }

  _fail(err) {
    if (err?.code === "CANCELLED") return;
    const error = err instanceof AppError ? err : new AppError("INTERNAL_ERROR", String(err?.message ?? err), { cause: err });
    console.warn("[smiling] call error:", error.code, error.message);
    this.error = error;
    this.lastErrorCode = error.code;
    this._teardownConnections();
    // Keep the devices for a retry after a network problem; release them when nothing can follow.
    if (FATAL_CODES.has(error.code) || error.code === "ROOM_FULL") this.media.stop();
    this._setPhase("error");
  }

  /** `video-paused` / `video-resumed`: stop or resume our own video when the relay asks
   *  (direction "up", our socket id), and show whose video is paused. A "probe" resumes
   *  sending on probation: the notice stays until the relay says "recovered". */
  _videoGate({ socketId, direction, reason }, paused) {
    if (direction !== "up" && direction !== "down") return;
    const own = socketId === this.local.socketId;
    if (own && direction === "up") void this.publisher?.setVideoSending(!paused);
    if (reason === "probe") return;
    const who = own ? this.local : this.participants.get(socketId);
    if (!who) return;
    who.weakVideo = { ...(who.weakVideo ?? {}), [direction]: paused };
    this._emitParticipants();
    if (paused) {
      this._announce(own ? "Video paused: weak connection. Audio continues." : `${displayName(who)}: video paused, weak connection.`);
    } else {
      this._announce(own ? "Video resumed." : `${displayName(who)}: video resumed.`);
    }
  }

  _addParticipant(p) {
    if (!p?.socketId || p.socketId === this.local.socketId) return;
    this.participants.set(p.socketId, {
      socketId: p.socketId,
      userId: p.userId,
      userName: p.userName || this._nameFor(p.userId, p.userRole),
      userRole: p.userRole,
      joinedAt: p.joinedAt,
      media: { audio: p.media?.audio ?? true, video: p.media?.video ?? true, screen: p.media?.screen ?? false },
      tracks: this.subscriber?.groups().get(p.socketId) ?? { audio: null, video: null },
    });
  }

  _nameFor(userId, role) {
    const people = this.room?.participants ?? {};
    for (const person of Object.values(people)) {
      if (person && person.id === userId && person.name) return person.name;
    }
    return ROLE_LABELS[role] ?? "Participant";
  }

  _resolveLocalName() {
    const name = this._nameFor(this.local.userId, this.local.role);
    this.local.name = name && name !== ROLE_LABELS[this.local.role] ? name : "You";
  }

  /** The person on the other side, for the page title ("Session with Dr. Smith"). */
  counterpartName() {
    const people = this.room?.participants ?? {};
    if (this.local.role === "client") return people.psychologist?.name ?? null;
    if (this.local.role === "psychologist") return people.client?.name ?? null;
    const names = [people.client?.name, people.psychologist?.name].filter(Boolean);
    return names.length ? names.join(" & ") : null;
  }

  _emitParticipants() {
    this.emit("participants", [...this.participants.values()]);
  }

  _announce(text) {
    this.emit("announce", text);
  }

  _setPhase(phase, { force = false } = {}) {
    if (this.phase === phase && !force) return;
    this.phase = phase;
    this._log.push({ at: Date.now(), event: "phase", phase });
    if (this._log.length > 200) this._log.splice(0, this._log.length - 200);
    this.emit("phase", phase);
  }

  get log() {
    return [...this._log];
  }
}

/** Bytes received on the connections' transports (RTP, RTCP and STUN from the relay). */
async function bytesFromRelay(pcs) {
  let total = 0;
  let found = false;
  for (const pc of pcs) {
    if (!pc || pc.connectionState === "closed") continue;
    try {
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type === "transport" && typeof s.bytesReceived === "number") {
          total += s.bytesReceived;
          found = true;
        }
      });
    } catch {
      return null;
    }
  }
  return found ? total : null;
}

function parseDate(value) {
  if (!value) return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function displayName(p) {
  return p?.userName || ROLE_LABELS[p?.userRole] || "Participant";
}

function waitConnected(connection, timeoutMs) {
  return new Promise((resolve, reject) => {
    if (connection.state === "connected") {
      resolve();
      return;
    }
    const timer = setTimeout(() => {
      off();
      reject(new AppError("CONNECTION_TIMEOUT", "media connection to the relay did not come up"));
    }, timeoutMs);
    const off = connection.on("state", (state) => {
      if (state === "connected") {
        clearTimeout(timer);
        off();
        resolve();
      } else if (state === "failed" || state === "closed") {
        clearTimeout(timer);
        off();
        reject(new AppError("CONNECTION_FAILED", `publisher connection ${state}`));
      }
    });
  });
}

export { delay };

/** "the psychologist", "the client", "an administrator", "the server (the session's time is over)". */
export function endedByWords(endedBy) {
  if (endedBy?.role === "server") return "the server (the session's time is over)";
  if (endedBy?.role === "admin") return "an administrator";
  return endedBy?.role ? `the ${endedBy.role}` : "another participant";
}
