// EncryptionStatus: which protection the call's media has, always visible during the call
// ("End-to-end encrypted" with the security code, or "Encrypted to the server") and a warning
// when the code changed or the key exchange failed (docs/e2ee.md).

import { clear, h, icon } from "./dom.js";

const LABELS = {
  e2ee: "End-to-end encrypted",
  pending: "Setting up end-to-end encryption…",
  relay: "Encrypted to the server",
  off: "Encrypted to the server",
};

export class EncryptionStatus {
  constructor(root) {
    this.el = h("div", { class: "encryption-status", id: "encryption-status", role: "status", hidden: true });
    root.append(this.el);
  }

  /** `state`: E2eeSession.state(), or null when the policy is off. */
  update(state) {
    const mode = state?.mode ?? "off";
    const el = this.el;
    el.hidden = false;
    el.dataset.mode = mode;
    el.dataset.warning = state?.mismatch ? "mismatch" : state?.keyChanged ? "key-changed" : state?.codeChanges ? "code-changed" : "";
    clear(el);
    el.append(h("span", { class: "encryption-label", id: "encryption-label" }, icon("lock", { size: 16 }), LABELS[mode]));
    if (mode !== "relay" && mode !== "off" && state.code) {
      el.append(
        h(
          "span",
          { class: "security-code", id: "security-code", title: "Read these words to each other: they match when nobody is listening in" },
          "Security code: ",
          h("strong", { text: state.code }),
        ),
      );
    }
    let note = null;
    if (state?.mismatch) note = "Keys don't match: the connection may be intercepted. Compare the security codes.";
    else if (state?.keyChanged) note = "A participant's key changed: compare the security code again.";
    else if (mode === "e2ee" && state?.codeChanges) note = "The security code changed: compare it again.";
    else if (mode === "relay" && state && !state.capable) note = "This browser can't encrypt end to end.";
    else if (mode === "relay") note = "Someone in the call can't encrypt end to end.";
    if (note) el.append(h("span", { class: "encryption-note", id: "encryption-note", text: note }));
  }
}
