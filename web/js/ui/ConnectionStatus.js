// ConnectionStatus: connecting / connected / reconnecting / failed, as a coloured pill. Changes are
// also announced through the page's live region by App.

import { h } from "./dom.js";

const LABELS = {
  checking: "Checking session…",
  preparing: "Starting camera…",
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  failed: "Connection lost",
  ending: "Ending call…",
  ended: "Call ended",
};

export class ConnectionStatus {
  constructor(root) {
    this.dot = h("span", { class: "status-dot", "aria-hidden": "true" });
    this.text = h("span", { class: "status-text" });
    // The text is the label (announcements go through the page's live region).
    this.el = h("div", { class: "status-pill", id: "connection-status" }, this.dot, this.text);
    root.append(this.el);
  }

  update(phase) {
    const label = LABELS[phase];
    this.el.hidden = !label;
    if (!label) return;
    this.el.dataset.state = phase;
    this.text.textContent = label;
  }
}
