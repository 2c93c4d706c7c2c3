// PreCallCheck: the waiting room's device and connection check — camera preview, microphone
// level meter, and a test of the network path with a verdict (web/js/precheck.js measures).
// The devices are released when the check is closed or the waiting room is left, so the call
// can take them.

import { describeError } from "../errors.js";
import { levelMeter, testNetwork } from "../precheck.js";
import { clear, h } from "./dom.js";

const VERDICT_TEXT = {
  good: () => "Good: your connection is ready for the video call.",
  poor: (r) =>
    r.detail === "slow-server"
      ? `May be poor: the server answers slowly (${Math.round(r.rttMs)} ms). Video may stutter; close other downloads or move closer to your Wi-Fi.`
      : "May be poor: your network only allows the video through TCP, not UDP. The call will work, but video may stutter. Ask your IT to allow UDP port 3478.",
  blocked: (r) =>
    r.detail === "server-unreachable"
      ? "Blocked: this device cannot reach the video server. Check your internet connection."
      : `Blocked: your network stops the video connection. Ask your IT to allow UDP port 3478 (and TCP 443)${
          r.turnHosts?.length ? ` to ${r.turnHosts.join(", ")}` : ""
        }, or use another network, such as a mobile hotspot.`,
};

export class PreCallCheck {
  /** `getIceServers()` resolves the ICE servers the call will use. */
  constructor({ getIceServers, baseUrl = "" }) {
    this.getIceServers = getIceServers;
    this.baseUrl = baseUrl;
    this.state = { running: false, camera: null, microphone: null, level: 0, maxLevel: 0, levelChanges: 0, network: null, verdict: null };
    this.stream = null;
    this.meter = null;
    this.el = this._render();
  }

  _render() {
    this.video = h("video", { class: "precheck-preview", id: "precheck-preview", autoplay: true, muted: true, playsinline: true, "aria-label": "Your camera preview" });
    this.video.muted = true;
    this.levelEl = h("meter", { class: "precheck-meter", id: "precheck-level", min: "0", max: "1", low: "0.05", high: "0.8", optimum: "0.3", value: "0", "aria-label": "Microphone level" });
    this.devicesText = h("p", { class: "muted", id: "precheck-devices", role: "status" });
    this.verdictEl = h("p", { class: "precheck-verdict", id: "precheck-verdict", role: "status", "aria-live": "polite" });
    this.button = h("button", { type: "button", class: "button", id: "precheck-start", text: "Check camera, microphone and connection", onclick: () => void this.run() });
    this.body = h("div", { class: "precheck-body", hidden: true }, this.video, h("p", { class: "muted", text: "Microphone: speak to see the level move." }), this.levelEl, this.devicesText, this.verdictEl);
    return h(
      "section",
      { class: "precheck", id: "precheck", "aria-labelledby": "precheck-title" },
      h("h2", { id: "precheck-title", text: "Before your session" }),
      h("p", { class: "muted", text: "Check that your camera, microphone and network work for the call." }),
      this.body,
      h("div", { class: "actions" }, this.button),
    );
  }

  async run() {
    if (this.state.running) return;
    this.stop();
    this.state = { ...this.state, running: true, verdict: null, network: null, maxLevel: 0, levelChanges: 0 };
    this.body.hidden = false;
    this.button.disabled = true;
    this.button.textContent = "Checking…";
    this.verdictEl.textContent = "Testing your connection…";
    delete this.verdictEl.dataset.verdict;
    await Promise.all([this._devices(), this._network()]);
    this.state.running = false;
    this.button.disabled = false;
    this.button.textContent = "Check again";
  }

  async _devices() {
    clear(this.devicesText);
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: { ideal: 640 }, height: { ideal: 480 } } });
    } catch (err) {
      // Try each device alone, so one missing device does not hide the other.
      const tracks = [];
      for (const kind of ["audio", "video"]) {
        try {
          const s = await navigator.mediaDevices.getUserMedia({ [kind]: true });
          tracks.push(...s.getTracks());
        } catch {
          /* reported below */
        }
      }
      this.stream = tracks.length ? new MediaStream(tracks) : null;
      if (!this.stream) {
        const code = err?.name === "NotAllowedError" ? "CAMERA_DENIED" : err?.name === "NotReadableError" ? "DEVICE_IN_USE" : "NO_DEVICE";
        this.devicesText.textContent = describeError(code, String(err?.message ?? err)).text;
      }
    }
    const stream = this.stream;
    this.state.camera = Boolean(stream?.getVideoTracks().length);
    this.state.microphone = Boolean(stream?.getAudioTracks().length);
    if (!stream) return;
    const missing = [!this.state.camera && "camera", !this.state.microphone && "microphone"].filter(Boolean);
    this.devicesText.textContent = missing.length ? `No ${missing.join(" or ")} found.` : "Camera and microphone found.";
    this.video.srcObject = stream;
    void this.video.play?.().catch(() => {});
    let last = -1;
    this.meter = levelMeter(stream, (level) => {
      this.levelEl.value = level;
      this.state.level = level;
      this.state.maxLevel = Math.max(this.state.maxLevel, level);
      if (Math.abs(level - last) > 0.005) this.state.levelChanges += 1;
      last = level;
    });
  }

  async _network() {
    let result;
    try {
      const iceServers = await this.getIceServers();
      result = await testNetwork(iceServers, { baseUrl: this.baseUrl });
    } catch (err) {
      result = { verdict: "blocked", detail: "server-unreachable", error: String(err?.message ?? err) };
    }
    this.state.network = result;
    this.state.verdict = result.verdict;
    this.verdictEl.dataset.verdict = result.verdict;
    this.verdictEl.textContent = VERDICT_TEXT[result.verdict](result);
  }

  /** Release camera and microphone. */
  stop() {
    this.meter?.stop();
    this.meter = null;
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.stream = null;
    if (this.video) this.video.srcObject = null;
  }
}
