// ErrorDisplay: the blocking error card (can't join, devices blocked, server unreachable…) and a
// dismissible banner for problems that don't stop the call (screen share refused, a hiccup).

import { describeError } from "../errors.js";
import { clear, h, icon } from "./dom.js";

const ACTION_LABELS = { retry: "Try again", signin: "Sign in again", reload: "Reload page" };

export class ErrorDisplay {
  /** @param {{onRetry: () => void, onSignIn: () => void}} handlers */
  constructor(root, bannerRoot, handlers) {
    this.root = root;
    this.bannerRoot = bannerRoot;
    this.handlers = handlers;
    this._bannerTimer = null;
  }

  /** Show the blocking card for `error` (an AppError or {code, message}). */
  show(error) {
    const info = describeError(error?.code, error?.message);
    clear(this.root);
    const heading = h("h1", { id: "error-title", tabindex: "-1", text: info.title });
    const actions = h("div", { class: "actions" });
    const label = ACTION_LABELS[info.action];
    if (label) {
      actions.append(
        h("button", {
          type: "button",
          class: "button primary",
          id: "error-action",
          text: label,
          onclick: () => {
            if (info.action === "signin") this.handlers.onSignIn();
            else if (info.action === "reload") window.location.reload();
            else this.handlers.onRetry();
          },
        }),
      );
    }
    this.root.append(
      h(
        "div",
        { class: "card error-card", role: "alert", "aria-labelledby": "error-title", dataset: { code: info.code } },
        h("div", { class: "card-icon error" }, icon("alert", { size: 32 })),
        heading,
        h("p", { class: "error-text", id: "error-text", text: info.text }),
        actions,
        h("p", { class: "error-code muted" }, "Error code: ", h("code", { text: info.code })),
      ),
    );
    heading.focus();
  }

  /** A non-blocking message at the top of the call; disappears by itself. */
  banner(code, text) {
    const info = code ? describeError(code, text) : { title: text, text: "" };
    clearTimeout(this._bannerTimer);
    clear(this.bannerRoot);
    const close = h(
      "button",
      { type: "button", class: "icon-button", "aria-label": "Dismiss message", onclick: () => this.hideBanner() },
      icon("x", { size: 18 }),
    );
    this.bannerRoot.append(
      h(
        "div",
        { class: "banner", role: "alert", dataset: { code: code ?? "" } },
        icon("alert", { size: 18 }),
        h("span", {}, h("strong", { text: info.title }), info.text ? ` ${info.text}` : ""),
        close,
      ),
    );
    this.bannerRoot.hidden = false;
    this._bannerTimer = setTimeout(() => this.hideBanner(), 10000);
  }

  hideBanner() {
    clearTimeout(this._bannerTimer);
    clear(this.bannerRoot);
    this.bannerRoot.hidden = true;
  }
}
