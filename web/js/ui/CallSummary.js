// CallSummary: after "End call" — how long the call lasted, what the session was recorded as, and
// an optional one-click 1–5 rating of the call's quality (POST /api/video-calls/rating/{id}).

import { endedByWords } from "../call.js";
import { describeError } from "../errors.js";
import { clear, durationInWords, formatDuration, h, icon } from "./dom.js";

const RATING_WORDS = ["", "bad", "poor", "fair", "good", "excellent"];
// The server's fixed set (calls/ratings.py REASONS).
const REASONS = [
  ["audio", "Audio"],
  ["video", "Video"],
  ["connection", "Connection"],
];

export class CallSummary {
  /** `onRate(rating, reasons)` sends the rating; it resolves or throws an AppError. */
  constructor(root, { onRate = null } = {}) {
    this.root = root;
    this.onRate = onRate;
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
    if (summary.endedBy) {
      rows.push(h("dt", { text: "Ended by" }), h("dd", { id: "summary-ended-by", text: endedByWords(summary.endedBy) }));
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
        summary.rateable && this.onRate ? this._ratingForm() : null,
      ),
    );
    heading.focus();
  }

  _ratingForm() {
    const status = h("p", { class: "rating-status", id: "rating-status", role: "status" });
    const reasons = REASONS.map(([value, label]) =>
      h("label", { class: "rating-reason" }, h("input", { type: "checkbox", name: "rating-reason", value }), ` ${label}`),
    );
    const buttons = [1, 2, 3, 4, 5].map((n) =>
      h("button", {
        type: "button",
        class: "button rating-button",
        id: `rate-${n}`,
        "aria-label": `${n} of 5: ${RATING_WORDS[n]}`,
        text: String(n),
        onclick: () => send(n),
      }),
    );
    const form = h(
      "form",
      { class: "rating-form", id: "rating-form", "aria-labelledby": "rating-title", onsubmit: (ev) => ev.preventDefault() },
      h("h2", { id: "rating-title", text: "How was the call's quality?" }),
      h("p", { class: "muted", text: "Optional, one click: 1 is bad, 5 is excellent." }),
      h(
        "fieldset",
        { class: "rating-reasons" },
        h("legend", { text: "What went wrong? (optional, tick before rating)" }),
        reasons,
      ),
      h("div", { class: "rating-buttons", role: "group", "aria-label": "Rating from 1 to 5" }, buttons),
      status,
    );
    const send = async (n) => {
      const chosen = [...form.querySelectorAll("input[name=rating-reason]:checked")].map((el) => el.value);
      for (const el of form.querySelectorAll("button, input")) el.disabled = true;
      status.textContent = "Sending…";
      try {
        await this.onRate(n, chosen);
        form.dataset.rated = String(n);
        status.textContent = `Thank you: you rated the call ${n} of 5.`;
      } catch (err) {
        if (err.code === "ALREADY_RATED") {
          form.dataset.rated = "already";
          status.textContent = "You have already rated this call. Thank you.";
          return;
        }
        status.textContent = `The rating could not be sent: ${describeError(err.code, err.message).text}`;
        for (const el of form.querySelectorAll("button, input")) el.disabled = false;
      }
    };
    return form;
  }
}
