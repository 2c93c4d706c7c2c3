// The frame cipher (docs/e2ee.md), run by RTCRtpScriptTransform for every sender and receiver.
//
// An encrypted frame:  clear prefix | AES-GCM(ciphertext + 16-byte tag) | IV (12) | key id | 0xE2
// The clear prefix is what the relay may read: 10 bytes of a VP8 keyframe (payload header and
// the picture size), 3 of a delta frame, the Opus TOC byte; it is the AES-GCM additional data, so
// it cannot be changed either. IV = kind (1) | per-key random salt (3) | frame counter (8).
//
// The main thread (e2ee.js) hands keys over as non-extractable CryptoKeys:
//   {type: "send-key", keyId, key}     our key for our own frames from now on
//   {type: "recv-key", senderId, keyId, key}   a participant's key
//   {type: "forget", senderId}         a participant left
//   {type: "mode", mode}               "e2ee" | "pending" | "relay" (see e2ee.js)
// and gets {type: "stats", ...} back twice a second.

const MAGIC = 0xe2;
const TRAILER = 14; // IV 12 + key id 1 + magic 1
const TAG = 16;
const REPLAY_WINDOW = 256;

let mode = "pending";
let sendKey = null; // {keyId, key, salt: Uint8Array(3), counters: {audio, video}}
const recvKeys = new Map(); // senderId → Map(keyId → {key, windows: Map(stream → ReplayWindow)})
const transformers = new Set();
const stats = { encrypted: 0, decrypted: 0, passedClear: 0, dropped: 0, undecryptable: 0, replayed: 0 };

function prefixLength(kind, data) {
  if (kind === "audio") return Math.min(1, data.length);
  // VP8 payload header: bit 0 of the first byte is 0 on a keyframe (RFC 6386 §9.1).
  return Math.min(data.length > 0 && (data[0] & 1) === 0 ? 10 : 3, data.length);
}

class ReplayWindow {
  constructor() {
    this.highest = -1;
    this.seen = new Set();
  }

  /** True once per counter, and only for counters not older than the window. */
  accept(counter) {
    if (counter <= this.highest - REPLAY_WINDOW || this.seen.has(counter)) return false;
    this.seen.add(counter);
    if (counter > this.highest) {
      this.highest = counter;
      if (this.seen.size > REPLAY_WINDOW * 2) {
        for (const c of this.seen) if (c <= this.highest - REPLAY_WINDOW) this.seen.delete(c);
      }
    }
    return true;
  }
}

async function encrypt(kind, frame, controller) {
  if (mode === "relay") {
    stats.passedClear += 1;
    controller.enqueue(frame);
    return;
  }
  const k = sendKey;
  if (!k) {
    stats.dropped += 1; // nothing leaves unencrypted while E2EE is on
    return;
  }
  const data = new Uint8Array(frame.data);
  const prefix = prefixLength(kind, data);
  const counter = (k.counters[kind] += 1);
  const iv = new Uint8Array(12);
  const view = new DataView(iv.buffer);
  iv[0] = kind === "video" ? 1 : 0;
  iv.set(k.salt, 1);
  view.setUint32(4, Math.floor(counter / 2 ** 32));
  view.setUint32(8, counter >>> 0);
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: data.subarray(0, prefix) },
      k.key,
      data.subarray(prefix),
    ),
  );
  const out = new Uint8Array(prefix + sealed.length + TRAILER);
  out.set(data.subarray(0, prefix), 0);
  out.set(sealed, prefix);
  out.set(iv, prefix + sealed.length);
  out[out.length - 2] = k.keyId;
  out[out.length - 1] = MAGIC;
  frame.data = out.buffer;
  stats.encrypted += 1;
  controller.enqueue(frame);
}

async function decrypt(kind, state, frame, controller) {
  const data = new Uint8Array(frame.data);
  const n = data.length;
  if (n >= TRAILER + TAG + 1 && data[n - 1] === MAGIC) {
    const keyId = data[n - 2];
    const iv = data.slice(n - TRAILER, n - 2);
    const prefix = prefixLength(kind, data);
    const body = data.subarray(prefix, n - TRAILER);
    // The sender that worked last for this receiver first, then everyone else with that key id.
    const order = [...recvKeys.keys()].sort((a, b) => (b === state.sender) - (a === state.sender));
    for (const senderId of order) {
      const entry = recvKeys.get(senderId)?.get(keyId);
      if (!entry) continue;
      let plain;
      try {
        plain = new Uint8Array(
          await crypto.subtle.decrypt(
            { name: "AES-GCM", iv, additionalData: data.subarray(0, prefix) },
            entry.key,
            body,
          ),
        );
      } catch {
        continue;
      }
      const view = new DataView(iv.buffer);
      const stream = `${iv[0]}:${iv[1]}:${iv[2]}:${iv[3]}`;
      const counter = view.getUint32(4) * 2 ** 32 + view.getUint32(8);
      let window = entry.windows.get(stream);
      if (!window) entry.windows.set(stream, (window = new ReplayWindow()));
      if (!window.accept(counter)) {
        stats.replayed += 1;
        return;
      }
      const out = new Uint8Array(prefix + plain.length);
      out.set(data.subarray(0, prefix), 0);
      out.set(plain, prefix);
      frame.data = out.buffer;
      state.sender = senderId;
      state.failing = false;
      stats.decrypted += 1;
      controller.enqueue(frame);
      return;
    }
    // Encrypted, but with no key we hold: dropped (the decoder asks for a keyframe later).
    stats.undecryptable += 1;
    state.failing = true;
    if (mode === "relay") return;
    return;
  }
  // Clear frames only from participants who cannot encrypt; in E2EE mode nothing clear plays.
  if (mode === "e2ee") {
    stats.dropped += 1;
    return;
  }
  stats.passedClear += 1;
  controller.enqueue(frame);
}

function requestKeyframes() {
  for (const t of transformers) {
    try {
      if (t.side === "send" && t.kind === "video") t.transformer.generateKeyFrame?.().catch(() => {});
      if (t.side === "recv" && t.kind === "video") t.transformer.sendKeyFrameRequest?.().catch(() => {});
    } catch {
      /* not supported by this browser: the decoder's own requests recover */
    }
  }
}

self.onrtctransform = (event) => {
  const transformer = event.transformer;
  const { side, kind } = transformer.options ?? {};
  const entry = { transformer, side, kind };
  const state = { sender: null, failing: false };
  transformers.add(entry);
  const transform = new TransformStream({
    transform: side === "send" ? (frame, c) => encrypt(kind, frame, c) : (frame, c) => decrypt(kind, state, frame, c),
  });
  transformer.readable
    .pipeThrough(transform)
    .pipeTo(transformer.writable)
    .catch(() => {})
    .finally(() => transformers.delete(entry));
};

self.onmessage = (event) => {
  const msg = event.data ?? {};
  if (msg.type === "send-key") {
    sendKey = { keyId: msg.keyId, key: msg.key, salt: crypto.getRandomValues(new Uint8Array(3)), counters: { audio: 0, video: 0 } };
    requestKeyframes();
  } else if (msg.type === "recv-key") {
    let ring = recvKeys.get(msg.senderId);
    if (!ring) recvKeys.set(msg.senderId, (ring = new Map()));
    ring.set(msg.keyId, { key: msg.key, windows: new Map() });
    // A short ring: the previous keys stay for frames still in flight after a rotation.
    while (ring.size > 3) ring.delete(ring.keys().next().value);
    requestKeyframes();
  } else if (msg.type === "forget") {
    recvKeys.delete(msg.senderId);
  } else if (msg.type === "mode") {
    const changed = mode !== msg.mode;
    mode = msg.mode;
    if (changed) requestKeyframes();
  }
};

setInterval(() => self.postMessage({ type: "stats", stats: { ...stats, mode } }), 500);
