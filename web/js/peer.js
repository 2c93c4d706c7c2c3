// The two RTCPeerConnections a participant has with the relay (docs/signaling.md):
//
// * PublisherConnection — we offer; our microphone and camera (or screen) go to the relay on two
//   `sendonly` transceivers that always exist, so mute / camera off / screen share only swap the
//   sender's track (RTCRtpSender.replaceTrack) and never renegotiate.
// * SubscriberConnection — the relay offers, with a track map (mid → participant); we answer and
//   group the receivers' tracks per participant for the video tiles.

import { E2eeSession } from "./e2ee.js";
import { AppError } from "./errors.js";
import { Emitter } from "./events.js";

/** How long to wait for ICE gathering before sending an SDP (the rest is trickled). */
const GATHER_WAIT_MS = 1500;

export function rtcConfiguration(iceServers, { relayOnly = false } = {}) {
  return {
    iceServers: Array.isArray(iceServers) ? iceServers : [],
    iceTransportPolicy: relayOnly ? "relay" : "all",
    bundlePolicy: "max-bundle",
    rtcpMuxPolicy: "require",
  };
}

/** Resolve when gathering completes or after `ms`, whichever comes first. */
function gathered(pc, ms = GATHER_WAIT_MS) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(finish, ms);
    function finish() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onChange);
      resolve();
    }
    function onChange() {
      if (pc.iceGatheringState === "complete") finish();
    }
    pc.addEventListener("icegatheringstatechange", onChange);
  });
}

class RelayConnection extends Emitter {
  constructor({ target, rtcConfig, signaling }) {
    super();
    this.target = target;
    this.signaling = signaling;
    this.pc = new RTCPeerConnection(rtcConfig);
    this.closed = false;
    this._descriptionSent = false;
    this.pc.addEventListener("icecandidate", (ev) => {
      // Candidates found before the SDP went out are already in it.
      if (!this._descriptionSent || this.closed) return;
      const c = ev.candidate;
      this.signaling.send("ice-candidate", {
        target: this.target,
        candidate: c ? { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex } : null,
      });
    });
    this.pc.addEventListener("connectionstatechange", () => {
      if (!this.closed) this.emit("state", this.pc.connectionState);
    });
  }

  get state() {
    return this.pc.connectionState;
  }

  async addRemoteCandidate(candidate) {
    if (this.closed) return;
    try {
      await this.pc.addIceCandidate(candidate ?? null);
    } catch (err) {
      console.warn(`[smiling] ${this.target}: ignoring remote candidate`, err);
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.removeAllListeners();
    try {
      this.pc.close();
    } catch {
      /* already closed */
    }
  }
}

export class PublisherConnection extends RelayConnection {
  constructor({ rtcConfig, signaling, e2ee = null }) {
    super({ target: "publisher", rtcConfig, signaling });
    this.e2ee = e2ee; // E2eeSession when this page encrypts its frames
    this.audio = null; // RTCRtpTransceiver
    this.video = null;
    this._answered = null;
  }

  /**
   * Create the two sendonly transceivers, offer, and wait for the relay's answer.
   * @param {{audio: MediaStreamTrack|null, video: MediaStreamTrack|null, stream: MediaStream}} media
   */
  async start({ audio, video, stream }, { timeoutMs = 10000 } = {}) {
    const streams = stream ? [stream] : [];
    this.audio = this.pc.addTransceiver(audio ?? "audio", { direction: "sendonly", streams });
    this.video = this.pc.addTransceiver(video ?? "video", { direction: "sendonly", streams });
    if (this.e2ee?.worker) {
      // Encrypted frames need the codecs whose clear prefix the worker knows (VP8, Opus).
      E2eeSession.preferCodecs(this.audio, "audio");
      E2eeSession.preferCodecs(this.video, "video");
      this.e2ee.attachSender(this.audio.sender, "audio");
      this.e2ee.attachSender(this.video.sender, "video");
    }
    let timer;
    const answered = new Promise((resolve, reject) => {
      this._answered = { resolve, reject };
      timer = setTimeout(
        () => reject(new AppError("CONNECTION_TIMEOUT", "the relay did not answer the publisher offer")),
        timeoutMs,
      );
    });
    answered.catch(() => {}); // awaited below; this only silences an early rejection
    try {
      await this.pc.setLocalDescription(await this.pc.createOffer());
      await gathered(this.pc);
      if (this.closed) return;
      this._descriptionSent = true;
      const offer = this.pc.localDescription;
      const sent = this.signaling.send("offer", {
        target: "publisher",
        offer: { type: offer.type, sdp: offer.sdp },
      });
      if (!sent) throw new AppError("SERVER_UNREACHABLE", "signaling closed before the publisher offer");
      await answered;
    } finally {
      clearTimeout(timer);
    }
  }

  async handleAnswer(answer) {
    if (this.closed) return;
    try {
      await this.pc.setRemoteDescription(answer);
      this._answered?.resolve();
    } catch (err) {
      this._answered?.reject(new AppError("NEGOTIATION_FAILED", String(err), { cause: err }));
    }
  }

  /** Swap what the camera sender sends (camera, screen, or nothing) without renegotiating. */
  async setVideoTrack(track) {
    if (!this.video || this.closed) return;
    await this.video.sender.replaceTrack(track ?? null);
    this._preferResolution(track?.contentHint === "detail");
  }

  /** Audio first: stop (false) or resume (true) sending video, without renegotiation; the
   *  track stays attached, the encoder just idles (RTCRtpEncodingParameters.active). */
  async setVideoSending(on) {
    const sender = this.video?.sender;
    if (!sender?.getParameters || this.closed) return;
    try {
      const params = sender.getParameters();
      if (!params.encodings?.length) return;
      for (const encoding of params.encodings) encoding.active = on;
      await sender.setParameters(params);
    } catch (err) {
      console.warn("[smiling] could not", on ? "resume" : "pause", "the video:", err);
    }
  }

  async setAudioTrack(track) {
    if (!this.audio || this.closed) return;
    await this.audio.sender.replaceTrack(track ?? null);
  }

  /** Screen content: keep the resolution (text stays legible) and drop frames instead. */
  _preferResolution(screen) {
    const sender = this.video?.sender;
    if (!sender?.getParameters) return;
    try {
      const params = sender.getParameters();
      params.degradationPreference = screen ? "maintain-resolution" : "balanced";
      if (!params.encodings?.length) return;
      sender.setParameters(params).catch(() => {});
    } catch {
      /* not supported: the browser's default is fine */
    }
  }
}

export class SubscriberConnection extends RelayConnection {
  constructor({ rtcConfig, signaling, e2ee = null }) {
    super({ target: "subscriber", rtcConfig, signaling });
    this.trackMap = new Map(); // mid → {kind, socketId, userId}
    this._queue = Promise.resolve();
    this.pc.addEventListener("track", (ev) => {
      // Before the first frame arrives: every receiver decrypts (clear frames pass when allowed).
      if (e2ee?.worker) e2ee.attachReceiver(ev.receiver, ev.track.kind);
      this._publish();
    });
  }

  /** The relay's offer (first one or a renegotiation): answer it, then publish the track groups. */
  handleOffer(offer, tracks) {
    this._queue = this._queue.then(async () => {
      if (this.closed) return;
      try {
        await this.pc.setRemoteDescription(offer);
        await this.pc.setLocalDescription(await this.pc.createAnswer());
        if (!this._descriptionSent) await gathered(this.pc);
        if (this.closed) return;
        this._descriptionSent = true;
        const answer = this.pc.localDescription;
        this.signaling.send("answer", { target: "subscriber", answer: { type: answer.type, sdp: answer.sdp } });
      } catch (err) {
        this.emit("negotiation-error", new AppError("NEGOTIATION_FAILED", String(err), { cause: err }));
        return;
      }
      if (Array.isArray(tracks)) this.setTrackMap(tracks);
      else this._publish();
    });
    return this._queue;
  }

  /** A `tracks` event (or the map carried by an offer). */
  setTrackMap(tracks) {
    this.trackMap = new Map(tracks.filter((t) => t && t.mid != null).map((t) => [String(t.mid), t]));
    this._publish();
  }

  /** Map<socketId, {audio: MediaStreamTrack|null, video: MediaStreamTrack|null, userId}> */
  groups() {
    const groups = new Map();
    for (const transceiver of this.pc.getTransceivers()) {
      const info = transceiver.mid == null ? null : this.trackMap.get(String(transceiver.mid));
      if (!info?.socketId) continue;
      const track = transceiver.receiver.track;
      if (!track || track.kind !== info.kind) continue;
      const group = groups.get(info.socketId) ?? { audio: null, video: null, userId: info.userId };
      group[info.kind] = track;
      groups.set(info.socketId, group);
    }
    return groups;
  }

  _publish() {
    if (!this.closed) this.emit("tracks", this.groups());
  }
}
