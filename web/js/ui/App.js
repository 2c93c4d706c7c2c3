// App (the seed's VideoCallPageNew / VideoCallRoomNew): routes between the sign-in step, the
// waiting room, the call and the summary, and wires CallSession's events to the components.

import { ApiClient } from "../api.js";
import { decodeToken, forgetToken, isExpired, saveToken, takeToken } from "../auth.js";
import { CONNECTION_PHASES, CallSession } from "../call.js";
import { defaultSignalingUrl } from "../signaling.js";
import { CallControls } from "./CallControls.js";
import { CallSummary } from "./CallSummary.js";
import { CallTimer } from "./CallTimer.js";
import { ConnectionStatus } from "./ConnectionStatus.js";
import { EncryptionStatus } from "./EncryptionStatus.js";
import { ErrorDisplay } from "./ErrorDisplay.js";
import { NetworkQualityIndicator } from "./NetworkQualityIndicator.js";
import { ParticipantList } from "./ParticipantList.js";
import { SignIn } from "./SignIn.js";
import { VideoDisplay } from "./VideoDisplay.js";
import { WaitingRoom } from "./WaitingRoom.js";
import { h, icon } from "./dom.js";

const VIEWS = ["loading", "signin", "waiting", "call", "summary", "error"];
const WIDE = "(min-width: 960px)";

/** `/call/<sessionId>` → sessionId (or `?session=` on `/`). */
export function sessionIdFromLocation(location = window.location) {
  const match = location.pathname.match(/^\/call\/([^/]+)\/?$/);
  if (match) return decodeURIComponent(match[1]);
  return new URL(location.href).searchParams.get("session");
}

export class App {
  constructor(doc = document) {
    this.doc = doc;
    const $ = (id) => doc.getElementById(id);
    this.views = Object.fromEntries(VIEWS.map((v) => [v, $(`view-${v}`)]));
    this.live = $("live");
    this.loadingText = $("loading-text");
    this.title = $("call-title");
    this.controlsRoot = $("controls");
    this.reconnectOverlay = $("reconnect-overlay");
    this.endDialog = $("end-dialog");
    this.status = new ConnectionStatus($("topbar-status"));
    this.encryption = new EncryptionStatus(doc.querySelector(".stage-wrap"));
    this.quality = new NetworkQualityIndicator($("topbar-status"));
    this.timer = new CallTimer($("topbar-status"));
    this.video = new VideoDisplay($("stage"));
    this.participantsRoot = $("participants");
    this.participantList = new ParticipantList(this.participantsRoot, { onClose: () => this.setParticipantsOpen(false) });
    this.errors = new ErrorDisplay(this.views.error, $("banner"), {
      onRetry: () => this.retry(),
      onSignIn: () => this.showSignIn({ reason: null, forget: true }),
    });
    this.waitingRoom = new WaitingRoom(this.views.waiting, {
      onCheckNow: () => this.session?.recheck(),
      getIceServers: async () => (await this.session.api.config())?.iceServers ?? [],
    });
    this.summary = new CallSummary(this.views.summary, {
      onRate: (rating, reasons) => this.session.api.rate(this.session.sessionId, rating, reasons),
    });
    this.signIn = new SignIn(this.views.signin, { onSubmit: (v) => this.onSignedIn(v) });
    this.controls = new CallControls(this.controlsRoot, {
      onToggleAudio: () => this.session?.toggleAudio(),
      onToggleVideo: () => this._busy(() => this.session?.toggleVideo()),
      onToggleScreen: () => this._busy(() => this.session?.toggleScreenShare()),
      onToggleParticipants: () => this.setParticipantsOpen(!this.participantsOpen),
      onEnd: () => this.confirmEnd(),
    });
    this.participantsOpen = window.matchMedia(WIDE).matches;
    this.busy = false;
    this.session = null;
    this._wireDialog();
    doc.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && this.participantsOpen && !window.matchMedia(WIDE).matches) {
        this.setParticipantsOpen(false);
        this.controls.people.button.focus();
      }
    });
    window.addEventListener("pagehide", () => this.session?.leaveOnUnload());
  }

  start() {
    const sessionId = sessionIdFromLocation();
    const token = takeToken();
    const claims = decodeToken(token);
    if (!token || !claims || !sessionId) {
      this.showSignIn({ sessionId, reason: token && !claims ? "The access token in the link is not valid." : null });
      return;
    }
    if (isExpired(claims)) {
      this.showSignIn({ sessionId, reason: "Your access token has expired. Please sign in again.", forget: true });
      return;
    }
    this.startSession({ sessionId, token, claims });
  }

  showSignIn({ sessionId = this.session?.sessionId ?? sessionIdFromLocation(), reason = null, forget = false } = {}) {
    if (forget) forgetToken();
    this._disposeSession();
    this.showView("signin");
    this.signIn.show({ sessionId, reason });
  }

  onSignedIn({ token, sessionId }) {
    saveToken(token);
    if (sessionIdFromLocation() !== sessionId) {
      window.history.replaceState(null, "", `/call/${encodeURIComponent(sessionId)}${window.location.search}`);
    }
    this.startSession({ sessionId, token, claims: decodeToken(token) });
  }

  startSession({ sessionId, token, claims }) {
    this._disposeSession();
    const params = new URLSearchParams(window.location.search);
    const session = new CallSession({
      sessionId,
      token,
      claims,
      api: new ApiClient({ token }),
      signalingUrl: defaultSignalingUrl(),
      relayOnly: params.get("relayOnly") === "1",
    });
    session.exposeE2eeKeys = params.get("e2eeTestKeys") === "1";
    this.session = session;
    session.on("e2ee", (state) => this.encryption.update(state));
    session.on("phase", (phase) => this.onPhase(phase));
    session.on("participants", () => this.renderCall());
    session.on("media", () => this.renderCall());
    session.on("room", () => this.renderTitle());
    session.on("quality", (q) => this.quality.update(q));
    session.on("timer", (startedAt) => this.timer.start(startedAt));
    session.on("announce", (text) => this.announce(text));
    session.on("notice", (n) => this.errors.banner(n.code ?? null, n.text));
    void session.begin();
  }

  retry() {
    if (!this.session) {
      this.start();
      return;
    }
    void this.session.begin();
  }

  _disposeSession() {
    if (!this.session) return;
    this.session.removeAllListeners();
    this.session.leaveOnUnload();
    this.session.media.stop();
    this.session = null;
  }

  onPhase(phase) {
    const s = this.session;
    this.status.update(phase);
    const inCall = CONNECTION_PHASES.has(phase) || phase === "ending";
    this.controlsRoot.hidden = !inCall;
    this.quality.show(phase === "connected");
    if (phase !== "waiting") this.waitingRoom.hide();
    switch (phase) {
      case "checking":
        this.showLoading("Checking your session…");
        break;
      case "preparing":
        this.showLoading("Starting your camera and microphone… If your browser asks, choose “Allow”.");
        break;
      case "waiting":
        this.showView("waiting");
        this.waitingRoom.show(s.waiting, s.counterpartName());
        this.renderTitle();
        break;
      case "connecting":
      case "connected":
      case "reconnecting":
      case "failed":
      case "ending":
        this.showView("call");
        this.renderCall();
        this.renderOverlay(phase);
        if (phase === "connected") this.timer.start(s.startedAt);
        if (phase === "reconnecting" || phase === "failed") this.announce(phase === "failed" ? "Connection lost." : "Reconnecting…");
        break;
      case "ended":
        this.timer.hide();
        this.video.clear();
        this.showView("summary");
        this.summary.show(s.summary, s.counterpartName());
        break;
      case "error":
        this.timer.hide();
        this.video.clear();
        this.errors.hideBanner();
        this.showView("error");
        this.errors.show(s.error);
        break;
      default:
        break;
    }
  }

  showView(name) {
    for (const [view, el] of Object.entries(this.views)) el.hidden = view !== name;
    this.doc.body.dataset.view = name;
  }

  showLoading(text) {
    this.showView("loading");
    this.loadingText.textContent = text;
  }

  renderTitle() {
    const who = this.session?.counterpartName();
    this.title.textContent = who ? `Session with ${who}` : "Video session";
    this.doc.title = `${who ? `Session with ${who}` : "Video session"} · Smiling Steps`;
  }

  renderCall() {
    const s = this.session;
    if (!s) return;
    const remotes = [...s.participants.values()];
    const media = s.media.state();
    const waitingFor = s.counterpartName();
    const weakVideo = s.local.weakVideo;
    this.video.setLocal({ name: s.local.name, role: s.local.role, media, stream: s.media.previewStream(), weakVideo });
    this.video.setRemotes(remotes, { waitingFor, weakDown: Boolean(weakVideo?.down) });
    this.participantList.update({ ...s.local, media }, remotes);
    this.controls.update({
      ...media,
      hasMicrophone: s.media.hasMicrophone,
      participantsOpen: this.participantsOpen,
      participantCount: remotes.length + 1,
      busy: this.busy || s.phase === "ending",
    });
    this.participantsRoot.classList.toggle("open", this.participantsOpen);
    this.renderTitle();
  }

  renderOverlay(phase) {
    const overlay = this.reconnectOverlay;
    overlay.replaceChildren();
    overlay.hidden = phase !== "reconnecting" && phase !== "failed" && phase !== "connecting";
    overlay.dataset.state = phase;
    if (phase === "connecting") {
      overlay.append(h("div", { class: "spinner", "aria-hidden": "true" }), h("p", { text: "Connecting to the call…" }));
    } else if (phase === "reconnecting") {
      overlay.append(
        h("div", { class: "spinner", "aria-hidden": "true" }),
        h("p", { text: "Connection lost. Reconnecting…" }),
        h("p", { class: "muted", text: "You'll be back in the call automatically." }),
      );
    } else if (phase === "failed") {
      overlay.append(
        icon("alert", { size: 32 }),
        h("p", { text: "We couldn't reconnect you to the call." }),
        h("p", { class: "muted", text: "Check your internet connection, then try again." }),
        h(
          "button",
          { type: "button", class: "button primary", id: "btn-reconnect", onclick: () => this.session?.retryConnection() },
          "Try again",
        ),
      );
      overlay.querySelector("button")?.focus();
    }
  }

  setParticipantsOpen(open) {
    this.participantsOpen = open;
    this.renderCall();
    if (open && !window.matchMedia(WIDE).matches) this.participantList.closeButton.focus();
  }

  confirmEnd() {
    if (typeof this.endDialog.showModal === "function") {
      this.endDialog.showModal();
      this.doc.getElementById("confirm-end").focus();
    } else if (window.confirm("End the call?")) {
      void this.session?.end();
    }
  }

  _wireDialog() {
    this.doc.getElementById("confirm-end").addEventListener("click", () => {
      this.endDialog.close();
      void this.session?.end();
    });
    this.doc.getElementById("cancel-end").addEventListener("click", () => this.endDialog.close());
  }

  async _busy(fn) {
    if (this.busy) return;
    this.busy = true;
    this.renderCall();
    try {
      await fn();
    } finally {
      this.busy = false;
      this.renderCall();
    }
  }

  announce(text) {
    // Clear first so the same sentence twice is announced twice.
    this.live.textContent = "";
    setTimeout(() => {
      this.live.textContent = text;
    }, 50);
  }
}
