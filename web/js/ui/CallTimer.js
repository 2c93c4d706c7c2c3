// CallTimer: time since the call started (the server's start time when known, so both sides agree).

import { durationInWords, formatDuration, h, icon } from "./dom.js";

export class CallTimer {
  constructor(root) {
    this.value = h("time", { class: "timer-value", id: "call-timer" }, "00:00");
    this.el = h("div", { class: "call-timer", role: "timer", "aria-live": "off" }, icon("clock", { size: 16 }), this.value);
    this.el.hidden = true;
    root.append(this.el);
    this.startedAt = null;
    this._interval = null;
  }

  start(startedAt) {
    this.startedAt = startedAt;
    this.el.hidden = false;
    this._tick();
    if (!this._interval) this._interval = setInterval(() => this._tick(), 1000);
  }

  stop() {
    clearInterval(this._interval);
    this._interval = null;
  }

  hide() {
    this.stop();
    this.el.hidden = true;
  }

  get seconds() {
    return this.startedAt ? Math.max(0, (Date.now() - this.startedAt.getTime()) / 1000) : 0;
  }

  _tick() {
    const s = this.seconds;
    this.value.textContent = formatDuration(s);
    this.value.setAttribute("datetime", `PT${Math.floor(s)}S`);
    this.el.setAttribute("aria-label", `Call duration: ${durationInWords(s)}`);
  }
}
