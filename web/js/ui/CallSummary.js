// CallSummary: after "End call" — how long the call lasted and what the session was recorded as.

import { describeError } from "../errors.js";
import { clear, durationInWords, formatDuration, h, icon } from "./dom.js";

export class CallSummary {
  constructor(root) {
    this.root = root;
  }

  show(summary, counterpart) {
    clear(this.root);
    const heading = h("h1", { tabindex: "-1", id: "summary-title", text: "Call ended" });
    const rows = [
      h("dt", { text: "Duration" }),
      h("dd", { id: "summary-duration" }, formatDuration(summary.seconds), h("span", { class: "sr-only", text: ` (${durationInWords(summary.seconds)})` })),
    ];
    if (summary.minutes != null) {
      rows.push(h("dt", { text: "Recorded" }), h("dd", { id: "summary-minutes", text: `${summary.minutes} min` }));
    }
    if (summary.status) rows.push(h("dt", { text: "Session" }), h("dd", { id: "summary-status", text: summary.status }));
    const note = summary.error
      ? h("p", { class: "muted", id: "summary-note", text: `The call ended, but the session could not be marked as completed: ${describeError(summary.error.code, summary.error.message).text}` })
      : h("p", { class: "muted", text: "Thank you. You can close this tab now." });
    this.root.append(
      h(
        "div",
        { class: "card summary-card", id: "call-summary" },
        h("div", { class: "card-icon ok" }, icon("check", { size: 32 })),
        heading,
        counterpart ? h("p", { text: `Your session with ${counterpart} has ended.` }) : null,
        h("dl", { class: "summary-list" }, rows),
        note,
      ),
    );
    heading.focus();
  }
}
