// WaitingRoom: shown when it is too early to join. Counts down to the moment joining opens (15
// minutes before the session) and re-checks with the server by itself.

import { clear, durationInWords, formatDuration, h, icon } from "./dom.js";
import { PreCallCheck } from "./PreCallCheck.js";

const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const DATE = new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long" });

export class WaitingRoom {
  /** `getIceServers()` (the call's ICE servers) enables the pre-call check. */
  constructor(root, { onCheckNow, getIceServers = null }) {
    this.root = root;
    this.onCheckNow = onCheckNow;
    this.getIceServers = getIceServers;
    this.precheck = null;
    this._interval = null;
  }

  show({ opensAt, startsAt }, counterpart) {
    this.opensAt = opensAt;
    const sameDay = startsAt && startsAt.toDateString() === new Date().toDateString();
    const when = startsAt ? `${sameDay ? "today" : DATE.format(startsAt)} at ${TIME.format(startsAt)}` : null;
    const intro = when
      ? `Your session${counterpart ? ` with ${counterpart}` : ""} starts ${when}. You can join up to 15 minutes before it starts.`
      : "You can join up to 15 minutes before the session starts.";
    if (this.card?.isConnected) {
      // A re-check: update in place, so focus and the screen reader's position are kept.
      this.intro.textContent = intro;
    } else {
      clear(this.root);
      this.countdown = h("span", { class: "countdown", id: "waiting-countdown" });
      this.countdownWords = h("span", { class: "sr-only" });
      this.intro = h("p", { id: "waiting-intro", text: intro });
      const heading = h("h1", { tabindex: "-1", id: "waiting-title", text: "Your session hasn't started yet" });
      this.card = h(
        "div",
        { class: "card waiting-card", id: "waiting-room" },
        h("div", { class: "card-icon" }, icon("clock", { size: 32 })),
        heading,
        this.intro,
        h(
          "p",
          { class: "countdown-row", role: "timer", "aria-live": "off" },
          h("span", { class: "muted", text: "Joining opens in " }),
          this.countdown,
          this.countdownWords,
        ),
        h("p", { class: "muted", text: "This page checks again by itself and lets you in as soon as the call opens. You can leave it open." }),
        h("div", { class: "actions" }, h("button", { type: "button", class: "button", id: "check-now", text: "Check again now", onclick: () => this.onCheckNow() })),
      );
      if (this.getIceServers) {
        this.precheck?.stop();
        this.precheck = new PreCallCheck({ getIceServers: this.getIceServers });
        this.card.append(this.precheck.el);
      }
      this.root.append(this.card);
      heading.focus();
    }
    this._tick();
    clearInterval(this._interval);
    this._interval = setInterval(() => this._tick(), 1000);
  }

  _tick() {
    if (!this.opensAt) {
      this.countdown.textContent = "a few minutes";
      return;
    }
    const seconds = Math.max(0, (this.opensAt.getTime() - Date.now()) / 1000);
    this.countdown.textContent = formatDuration(seconds);
    this.countdownWords.textContent = ` (${durationInWords(seconds)})`;
  }

  hide() {
    clearInterval(this._interval);
    this._interval = null;
    // The call takes the camera and microphone next.
    this.precheck?.stop();
  }
}
