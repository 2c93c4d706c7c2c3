// The local camera, microphone and screen.
//
// Microphone mute sets `track.enabled = false` (silence keeps flowing; unmute is instant). Camera
// off stops the camera (its light goes out) and the publisher sends nothing; camera on opens it
// again. Screen sharing replaces the camera on the same sender and puts the camera back after.

import { AppError, mediaError } from "./errors.js";
import { Emitter } from "./events.js";

export const AUDIO_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
export const VIDEO_CONSTRAINTS = {
  width: { ideal: 960 },
  height: { ideal: 540 },
  frameRate: { ideal: 24, max: 30 },
  facingMode: "user",
};

export function mediaSupported() {
  return Boolean(window.isSecureContext && navigator.mediaDevices?.getUserMedia && window.RTCPeerConnection);
}

export class LocalMedia extends Emitter {
  constructor() {
    super();
    this.audioTrack = null;
    this.cameraTrack = null;
    this.screenTrack = null;
    this.audioEnabled = true;
    this.videoEnabled = true;
    this.notice = null; // e.g. "NO_CAMERA" when joining with the microphone only
    this._screenCleanup = null;
  }

  /** Open camera and microphone. Falls back to one of them when the other is missing. */
  async acquire() {
    if (!mediaSupported()) {
      throw new AppError("UNSUPPORTED_BROWSER", "getUserMedia / RTCPeerConnection unavailable or insecure context");
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: AUDIO_CONSTRAINTS, video: VIDEO_CONSTRAINTS });
      this.audioTrack = stream.getAudioTracks()[0] ?? null;
      this.cameraTrack = stream.getVideoTracks()[0] ?? null;
    } catch (err) {
      const mapped = mediaError(err);
      if (mapped.code !== "NO_DEVICE") throw mapped;
      // One of the two devices is missing: join with whichever exists.
      this.audioTrack = await this._tryOne({ audio: AUDIO_CONSTRAINTS });
      this.cameraTrack = this.audioTrack ? null : await this._tryOne({ video: VIDEO_CONSTRAINTS });
      if (!this.audioTrack && !this.cameraTrack) throw mapped;
      this.notice = this.audioTrack ? "NO_CAMERA" : "NO_MICROPHONE";
    }
    this.videoEnabled = Boolean(this.cameraTrack);
    this.audioEnabled = Boolean(this.audioTrack);
    this._watch(this.cameraTrack);
    this.emit("change");
  }

  async _tryOne(constraints) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia(constraints);
      return stream.getTracks()[0] ?? null;
    } catch {
      return null;
    }
  }

  _watch(track) {
    // A camera unplugged mid-call ends its track: show the camera as off.
    track?.addEventListener("ended", () => {
      if (track !== this.cameraTrack) return;
      this.cameraTrack = null;
      this.videoEnabled = false;
      this.emit("video-track", this.outgoingVideoTrack());
      this.emit("change");
    });
  }

  /** The track the publisher's video sender should carry now. */
  outgoingVideoTrack() {
    return this.screenTrack ?? (this.videoEnabled ? this.cameraTrack : null);
  }

  /** A stream for the local preview (camera, or the screen while sharing). */
  previewStream() {
    const track = this.screenTrack ?? (this.videoEnabled ? this.cameraTrack : null);
    return new MediaStream(track ? [track] : []);
  }

  get hasMicrophone() {
    return Boolean(this.audioTrack);
  }

  get sharing() {
    return Boolean(this.screenTrack);
  }

  state() {
    return { audio: this.audioEnabled && this.hasMicrophone, video: this.videoEnabled, screen: this.sharing };
  }

  setAudioEnabled(enabled) {
    if (!this.audioTrack) return;
    this.audioEnabled = enabled;
    this.audioTrack.enabled = enabled;
    this.emit("change");
  }

  async setVideoEnabled(enabled) {
    if (enabled === this.videoEnabled) return;
    if (enabled) {
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: VIDEO_CONSTRAINTS });
      } catch (err) {
        throw mediaError(err);
      }
      this.cameraTrack = stream.getVideoTracks()[0];
      this._watch(this.cameraTrack);
      this.videoEnabled = true;
    } else {
      this.cameraTrack?.stop();
      this.cameraTrack = null;
      this.videoEnabled = false;
    }
    this.emit("video-track", this.outgoingVideoTrack());
    this.emit("change");
  }

  /** Start sharing the screen (production path: getDisplayMedia). */
  async startScreenShare() {
    if (this.screenTrack) return;
    let track;
    try {
      if (!navigator.mediaDevices?.getDisplayMedia) throw new DOMException("getDisplayMedia unavailable", "NotSupportedError");
      const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio: false });
      track = stream.getVideoTracks()[0];
    } catch (err) {
      const fake = testScreenTrack();
      if (!fake) {
        // The person closed the picker: not an error worth a banner.
        if (err?.name === "NotAllowedError" || err?.name === "AbortError") return;
        throw mediaError(err, { screen: true });
      }
      track = fake.track;
      this._screenCleanup = fake.stop;
    }
    if (!track) return;
    if ("contentHint" in track) track.contentHint = "detail";
    track.addEventListener("ended", () => {
      if (track === this.screenTrack) void this.stopScreenShare();
    });
    this.screenTrack = track;
    this.emit("video-track", this.outgoingVideoTrack());
    this.emit("change");
  }

  async stopScreenShare() {
    if (!this.screenTrack) return;
    const track = this.screenTrack;
    this.screenTrack = null;
    track.stop();
    this._screenCleanup?.();
    this._screenCleanup = null;
    this.emit("video-track", this.outgoingVideoTrack());
    this.emit("change");
  }

  stop() {
    for (const track of [this.audioTrack, this.cameraTrack, this.screenTrack]) track?.stop();
    this._screenCleanup?.();
    this.audioTrack = this.cameraTrack = this.screenTrack = null;
  }
}

/**
 * TEST-ONLY fallback for screen sharing where getDisplayMedia cannot capture (some headless
 * setups). Active only when a test sets `window.__smilingTest = {fakeScreen: true}` before the page
 * loads; production always uses getDisplayMedia and never reaches this. It draws a 1280×800
 * "shared slide" on a canvas and returns the canvas's captureStream track.
 */
function testScreenTrack() {
  if (!window.__smilingTest?.fakeScreen) return null;
  const canvas = document.createElement("canvas");
  canvas.width = 1280;
  canvas.height = 800;
  const ctx = canvas.getContext("2d");
  let frame = 0;
  const draw = () => {
    frame += 1;
    ctx.fillStyle = "#f4f7f6";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#1f6f6b";
    ctx.fillRect(0, 0, canvas.width, 90);
    ctx.fillStyle = "#fff";
    ctx.font = "bold 42px sans-serif";
    ctx.fillText("Shared screen (test)", 40, 60);
    ctx.fillStyle = "#24433f";
    ctx.font = "32px sans-serif";
    ctx.fillText("Box breathing: in 4 · hold 4 · out 4 · hold 4", 40, 190);
    const x = 40 + ((frame * 8) % (canvas.width - 120));
    ctx.fillStyle = "#e3a33b";
    ctx.fillRect(x, 260, 80, 80);
  };
  draw();
  const interval = setInterval(draw, 66);
  const track = canvas.captureStream(15).getVideoTracks()[0];
  return { track, stop: () => clearInterval(interval) };
}
