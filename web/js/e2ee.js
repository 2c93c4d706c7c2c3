// End-to-end encryption of the call's media (docs/e2ee.md): the key exchange and the mode.
//
// Every participant's browser makes an ephemeral ECDH P-256 key pair per connection and a random
// 32-byte sender secret; the secret is wrapped (AES-GCM) for every other participant with a key
// derived from the pair's ECDH secret, and travels in an `e2ee-key` message through the server,
// which cannot read it. HKDF turns a sender secret into the AES-GCM media key its frames are
// encrypted with (e2ee-worker.js). Someone joining or leaving makes everyone draw a new secret,
// wrapped only for those present. The security code is a hash of all public keys, sorted: a
// server swapping keys in transit makes the codes on the two screens differ.
//
// Modes: "e2ee" (every participant encrypts), "pending" (waiting for someone's key: we encrypt
// and play nothing clear from capable peers), "relay" (someone cannot encrypt and the policy is
// `preferred`: media is encrypted only as far as the relay), "off" (policy off).

import { Emitter } from "./events.js";
import { CODE_WORDS } from "./e2ee-words.js";

const WORKER_URL = "/static/js/e2ee-worker.js";
const INFO = "smiling-relay e2ee v1";
// Frames already in flight when the key changes still reach receivers that kept the old key; the
// new key starts a moment after it was sent so the others have it before the first frame.
const KEY_SWITCH_DELAY_MS = 400;
// A participant who never answers the key exchange (an old page, a QA bot) cannot encrypt.
const ANSWER_GRACE_MS = 3000;

const enc = new TextEncoder();

/** Can this browser encrypt frames (RTCRtpScriptTransform and WebCrypto)? */
export function canEncryptFrames() {
  return (
    typeof window.RTCRtpScriptTransform === "function" &&
    typeof window.Worker === "function" &&
    Boolean(window.crypto?.subtle) &&
    "transform" in RTCRtpSender.prototype
  );
}

export function toBase64(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s);
}

export function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i += 1) out[i] = s.charCodeAt(i);
  return out;
}

function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i += 1) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The four-word code of a set of raw public keys (order does not matter). */
export async function securityCode(publicKeys) {
  const sorted = [...publicKeys].sort(compareBytes);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", concat(enc.encode(`${INFO} code`), ...sorted)));
  return [...digest.slice(0, 4)].map((b) => CODE_WORDS[b]);
}

async function mediaKey(secret) {
  const base = await crypto.subtle.importKey("raw", secret, "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: enc.encode(INFO), info: enc.encode("media frame key") },
    base,
    { name: "AES-GCM", length: 128 },
    false,
    ["encrypt", "decrypt"],
  );
}

export class E2eeSession extends Emitter {
  /**
   * @param {{policy: "required"|"preferred", signaling: import('./signaling.js').SignalingClient,
   *          socketId: string, capable?: boolean, exposeKeys?: boolean}} options
   */
  constructor({ policy, signaling, socketId, capable = canEncryptFrames(), exposeKeys = false }) {
    super();
    this.policy = policy;
    this.signaling = signaling;
    this.socketId = socketId;
    this.capable = capable;
    this.exposeKeys = exposeKeys;
    this.peers = new Map(); // socketId → {userId, name, capable, publicKey, wrapKey, keyIds, mismatch, keyChanged, since}
    this.worker = null;
    this.keyPair = null;
    this.publicRaw = null;
    this.keyId = Math.floor(Math.random() * 256);
    this.secret = null;
    this.code = null;
    this._shownCode = null;
    this.codeChanges = 0;
    this.mode = capable ? "pending" : "relay";
    this.workerStats = null;
    this._recvSecrets = new Map(); // senderId → Map(keyId → base64), only kept with exposeKeys
    this._attached = new WeakSet();
    this._timers = new Set();
    this._closed = false;
    this._queue = Promise.resolve();
  }

  /** Make the key pair and the worker (before joining the room). */
  async start() {
    if (!this.capable) return;
    this.keyPair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
    this.publicRaw = new Uint8Array(await crypto.subtle.exportKey("raw", this.keyPair.publicKey));
    this.worker = new Worker(WORKER_URL, { name: "smiling-e2ee" });
    this.worker.onmessage = (ev) => {
      if (ev.data?.type === "stats") this.workerStats = ev.data.stats;
    };
    await this._newSecret(0);
    this._postMode();
  }

  // ------------------------------------------------------------ transforms

  attachSender(sender, kind) {
    if (!this.worker || !sender || this._attached.has(sender)) return;
    this._attached.add(sender);
    sender.transform = new RTCRtpScriptTransform(this.worker, { side: "send", kind });
  }

  attachReceiver(receiver, kind) {
    if (!this.worker || !receiver || this._attached.has(receiver)) return;
    this._attached.add(receiver);
    receiver.transform = new RTCRtpScriptTransform(this.worker, { side: "recv", kind });
  }

  /** VP8 and Opus only: the clear prefix of a frame is cut for those codecs. */
  static preferCodecs(transceiver, kind) {
    if (!transceiver?.setCodecPreferences || !window.RTCRtpReceiver?.getCapabilities) return;
    const wanted = kind === "video" ? ["video/vp8", "video/rtx"] : ["audio/opus"];
    const codecs = (RTCRtpReceiver.getCapabilities(kind)?.codecs ?? []).filter((c) =>
      wanted.includes(c.mimeType.toLowerCase()),
    );
    if (codecs.length) transceiver.setCodecPreferences(codecs);
  }

  // ------------------------------------------------------------ membership

  /** The participants already in the room (room-joined): say who we are to them. */
  setPeers(participants) {
    for (const p of participants) this._addPeer(p);
    this.announce();
    this._update();
  }

  peerJoined(p) {
    this._addPeer(p);
    // A joiner gets a new key, never the frames sent before it came in.
    this._rotate();
  }

  peerLeft(socketId) {
    if (!this.peers.delete(socketId)) return;
    this._recvSecrets.delete(socketId);
    this.worker?.postMessage({ type: "forget", senderId: socketId });
    // Who left keeps only keys nobody uses from now on.
    this._rotate();
  }

  _addPeer(p) {
    if (!p?.socketId || p.socketId === this.socketId || this.peers.has(p.socketId)) return;
    this.peers.set(p.socketId, {
      socketId: p.socketId,
      userId: p.userId,
      name: p.userName ?? null,
      capable: null,
      publicKey: null,
      wrapKey: null,
      keyIds: new Set(),
      mismatch: false,
      keyChanged: false,
      since: Date.now(),
    });
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      this._update();
    }, ANSWER_GRACE_MS + 50);
    this._timers.add(timer);
  }

  // ------------------------------------------------------------ key exchange

  /** An `e2ee-key` from another participant (in order: each waits for the previous one). */
  handleMessage(data) {
    this._queue = this._queue.then(() => this._handle(data)).catch((err) => console.warn("[smiling] e2ee-key:", err));
    return this._queue;
  }

  async _handle(data) {
    if (this._closed || !data?.socketId) return;
    let peer = this.peers.get(data.socketId);
    if (!peer) {
      this._addPeer({ socketId: data.socketId, userId: data.userId });
      peer = this.peers.get(data.socketId);
    }
    if (!data.capable) {
      peer.capable = false;
      this._update();
      return;
    }
    peer.capable = true;
    if (!this.capable) {
      this._update();
      return;
    }
    let resend = false;
    if (data.publicKey !== peer.publicKey) {
      if (peer.publicKey) peer.keyChanged = true; // the same participant, another key: tell the user
      const raw = fromBase64(data.publicKey);
      const pub = await crypto.subtle.importKey("raw", raw, { name: "ECDH", namedCurve: "P-256" }, false, []);
      const bits = await crypto.subtle.deriveBits({ name: "ECDH", public: pub }, this.keyPair.privateKey, 256);
      const base = await crypto.subtle.importKey("raw", bits, "HKDF", false, ["deriveKey"]);
      const [a, b] = [this.publicRaw, raw].sort(compareBytes);
      peer.wrapKey = await crypto.subtle.deriveKey(
        { name: "HKDF", hash: "SHA-256", salt: concat(a, b), info: enc.encode(`${INFO} key wrap`) },
        base,
        { name: "AES-GCM", length: 256 },
        false,
        ["encrypt", "decrypt"],
      );
      peer.publicKey = data.publicKey;
      peer.publicRaw = raw;
      peer.mismatch = false;
      resend = true; // it could not read our secret before it had our key
    }
    const wrapped = data.wrapped?.[this.socketId];
    if (wrapped && !peer.keyIds.has(data.keyId)) {
      try {
        const bytes = fromBase64(wrapped);
        const secret = await crypto.subtle.decrypt(
          { name: "AES-GCM", iv: bytes.subarray(0, 12), additionalData: this._wrapAad(data.socketId, this.socketId, data.keyId) },
          peer.wrapKey,
          bytes.subarray(12),
        );
        peer.keyIds.add(data.keyId);
        peer.mismatch = false;
        if (this.exposeKeys) {
          const ring = this._recvSecrets.get(data.socketId) ?? new Map();
          ring.set(data.keyId, toBase64(secret));
          this._recvSecrets.set(data.socketId, ring);
        }
        this.worker.postMessage({ type: "recv-key", senderId: data.socketId, keyId: data.keyId, key: await mediaKey(secret) });
      } catch {
        // Wrapped with a key we don't share: a public key was replaced on the way.
        peer.mismatch = true;
      }
    }
    if (resend) this.announce();
    await this._update();
  }

  _wrapAad(from, to, keyId) {
    return enc.encode(`${INFO}|${from}|${to}|${keyId}`);
  }

  /** Send our public key and our current secret wrapped for everyone whose key we have. */
  async announce() {
    if (this._closed) return;
    if (!this.capable) {
      this.signaling.send("e2ee-key", { capable: false });
      return;
    }
    const secret = this.secret;
    const keyId = this.keyId;
    const wrapped = {};
    for (const peer of this.peers.values()) {
      if (!peer.wrapKey) continue;
      const iv = crypto.getRandomValues(new Uint8Array(12));
      const sealed = await crypto.subtle.encrypt(
        { name: "AES-GCM", iv, additionalData: this._wrapAad(this.socketId, peer.socketId, keyId) },
        peer.wrapKey,
        secret,
      );
      wrapped[peer.socketId] = toBase64(concat(iv, new Uint8Array(sealed)));
    }
    this.signaling.send("e2ee-key", { capable: true, publicKey: toBase64(this.publicRaw), keyId, wrapped });
  }

  async _newSecret(delayMs) {
    this.keyId = (this.keyId + 1) % 256;
    this.secret = crypto.getRandomValues(new Uint8Array(32));
    const keyId = this.keyId;
    const key = await mediaKey(this.secret);
    const activate = () => {
      if (!this._closed && this.keyId === keyId) this.worker.postMessage({ type: "send-key", keyId, key });
      this.emit("change", this.state());
    };
    if (delayMs > 0) {
      const timer = setTimeout(() => {
        this._timers.delete(timer);
        activate();
      }, delayMs);
      this._timers.add(timer);
    } else activate();
  }

  _rotate() {
    if (!this.capable || this._closed) {
      if (!this.capable) this.announce();
      this._update();
      return;
    }
    this._queue = this._queue
      .then(async () => {
        await this._newSecret(KEY_SWITCH_DELAY_MS);
        await this.announce();
        await this._update();
      })
      .catch((err) => console.warn("[smiling] e2ee rotate:", err));
  }

  // ------------------------------------------------------------ mode and code

  _computeMode() {
    if (!this.capable) return "relay";
    const now = Date.now();
    let pending = false;
    for (const peer of this.peers.values()) {
      const silent = peer.capable === null && now - peer.since >= ANSWER_GRACE_MS;
      if (peer.capable === false || silent) {
        if (this.policy === "preferred") return "relay";
      } else if (peer.capable === null || !peer.keyIds.size) {
        pending = true;
      }
    }
    return pending ? "pending" : "e2ee";
  }

  async _update() {
    if (this._closed) return;
    const mode = this._computeMode();
    if (mode !== this.mode) {
      this.mode = mode;
      this._postMode();
    }
    let code = null;
    if (this.capable && this.peers.size && [...this.peers.values()].every((p) => p.publicRaw)) {
      code = (await securityCode([this.publicRaw, ...[...this.peers.values()].map((p) => p.publicRaw)])).join(" ");
    }
    // A code that differs from the last one shown (a moment without one, while a joiner's
    // key is on its way, is no change).
    this.code = code;
    if (code && this._shownCode && code !== this._shownCode) {
      this.codeChanges += 1;
      this.emit("code-changed", { before: this._shownCode, code });
    }
    if (code) this._shownCode = code;
    this.emit("change", this.state());
  }

  _postMode() {
    // The worker only distinguishes e2ee / pending / relay.
    this.worker?.postMessage({ type: "mode", mode: this.mode });
  }

  /** The page's view (also window.smilingCall.e2ee). */
  state() {
    const peers = [...this.peers.values()].map((p) => ({
      socketId: p.socketId,
      userId: p.userId,
      capable: p.capable,
      hasKey: p.keyIds.size > 0,
      mismatch: p.mismatch,
      keyChanged: p.keyChanged,
    }));
    return {
      policy: this.policy,
      capable: this.capable,
      mode: this.mode,
      code: this.mode === "relay" ? null : this.code,
      codeChanges: this.codeChanges,
      keyId: this.capable ? this.keyId : null,
      mismatch: peers.some((p) => p.mismatch),
      keyChanged: peers.some((p) => p.keyChanged),
      peers,
      frames: this.workerStats,
    };
  }

  /** Test support only (page opened with ?e2eeTestKeys=1): the raw secrets this page holds. */
  exportKeysForTest() {
    if (!this.exposeKeys) return null;
    const recv = [];
    for (const [senderId, ring] of this._recvSecrets) {
      for (const [keyId, secret] of ring) recv.push({ senderId, keyId, secret });
    }
    return { socketId: this.socketId, send: { keyId: this.keyId, secret: this.secret && toBase64(this.secret) }, recv };
  }

  close() {
    this._closed = true;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    this.worker?.terminate();
    this.worker = null;
    this.removeAllListeners();
  }
}
