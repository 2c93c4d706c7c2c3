// SignIn: when the page was opened without a token (or it expired), paste the access token from
// the Smiling Steps platform, and the session id when the link didn't carry one.

import { decodeToken, isExpired } from "../auth.js";
import { clear, h, icon } from "./dom.js";

export class SignIn {
  constructor(root, { onSubmit }) {
    this.root = root;
    this.onSubmit = onSubmit;
  }

  show({ sessionId, reason } = {}) {
    clear(this.root);
    const tokenField = h("textarea", {
      id: "token-input",
      name: "token",
      rows: "3",
      required: true,
      autocomplete: "off",
      spellcheck: "false",
      "aria-describedby": "token-help token-error",
    });
    const sessionField = h("input", { id: "session-input", name: "session", type: "text", value: sessionId ?? "", required: true, autocomplete: "off", "aria-describedby": "session-help" });
    const error = h("p", { class: "field-error", id: "token-error", role: "alert" });
    const heading = h("h1", { tabindex: "-1", text: "Join your video session" });
    const form = h(
      "form",
      {
        class: "card signin-card",
        id: "signin-form",
        novalidate: true,
        onsubmit: (ev) => {
          ev.preventDefault();
          const token = tokenField.value.trim();
          const claims = decodeToken(token);
          if (!claims) {
            error.textContent = "This doesn't look like a Smiling Steps access token. Copy it again from your account.";
            tokenField.focus();
            return;
          }
          if (isExpired(claims)) {
            error.textContent = "This access token has expired. Sign in to Smiling Steps again to get a new one.";
            tokenField.focus();
            return;
          }
          const session = sessionField.value.trim();
          if (!session) {
            error.textContent = "Enter the session ID from your booking.";
            sessionField.focus();
            return;
          }
          this.onSubmit({ token, sessionId: session });
        },
      },
      h("div", { class: "card-icon" }, icon("video", { size: 32 })),
      heading,
      reason ? h("p", { class: "notice", text: reason }) : null,
      h("label", { for: "session-input", text: "Session ID" }),
      sessionField,
      h("p", { class: "help", id: "session-help", text: "It is in the link from your booking confirmation." }),
      h("label", { for: "token-input", text: "Access token" }),
      tokenField,
      h("p", { class: "help", id: "token-help", text: "Open Smiling Steps, go to your session and choose “Join video call”, or paste the access token you were given." }),
      error,
      h("div", { class: "actions" }, h("button", { type: "submit", class: "button primary", id: "signin-submit", text: "Continue" })),
    );
    this.root.append(form);
    heading.focus();
  }
}
