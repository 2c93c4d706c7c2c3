// ParticipantList: who is in the call, their role, and whether their microphone / camera are on.

import { ROLE_LABELS, displayName } from "../call.js";
import { clear, h, icon, initials } from "./dom.js";

export class ParticipantList {
  constructor(root, { onClose }) {
    this.root = root;
    this.heading = h("h2", { id: "participants-heading" });
    this.list = h("ul", { class: "participant-list", "aria-labelledby": "participants-heading" });
    this.closeButton = h(
      "button",
      { type: "button", class: "icon-button drawer-close", "aria-label": "Close participants", onclick: onClose },
      icon("x", { size: 20 }),
    );
    root.append(h("div", { class: "panel-head" }, this.heading, this.closeButton), this.list);
  }

  update(local, remotes) {
    const everyone = [{ ...local, isLocal: true }, ...remotes];
    this.heading.textContent = `In this call (${everyone.length})`;
    clear(this.list);
    for (const p of everyone) {
      const name = p.isLocal ? local.name : displayName(p);
      const media = p.media ?? {};
      const role = ROLE_LABELS[p.isLocal ? local.role : p.userRole] ?? "";
      const states = [
        media.audio === false ? "microphone off" : "microphone on",
        media.screen ? "sharing screen" : media.video === false ? "camera off" : "camera on",
      ];
      this.list.append(
        h(
          "li",
          {
            class: "participant",
            dataset: { socketId: p.socketId ?? "", role: p.isLocal ? local.role ?? "" : p.userRole ?? "", reconnecting: p.reconnecting ? "true" : "false" },
          },
          h("span", { class: "avatar", "aria-hidden": "true" }, initials(name)),
          h(
            "span",
            { class: "participant-who" },
            h(
              "span",
              { class: "participant-name" },
              h("span", { class: "name-text", text: name }),
              p.isLocal ? h("span", { class: "you", text: "(you)" }) : null,
            ),
            h("span", { class: "participant-role", text: p.reconnecting ? `${role} · reconnecting…` : role }),
          ),
          h(
            "span",
            { class: "participant-media" },
            h("span", { class: `media-flag ${media.audio === false ? "off" : "on"}`, title: states[0] }, icon(media.audio === false ? "mic-off" : "mic", { size: 16 })),
            h("span", { class: `media-flag ${media.video === false && !media.screen ? "off" : "on"}`, title: states[1] }, icon(media.screen ? "monitor" : media.video === false ? "video-off" : "video", { size: 16 })),
            h("span", { class: "sr-only", text: states.join(", ") }),
          ),
        ),
      );
    }
  }
}
