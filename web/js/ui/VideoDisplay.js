// VideoDisplay: the remote participants' tiles (large) and the local preview (small, mirrored).
// LocalVideo and RemoteVideo of the seed's component tree are the two kinds of VideoTile.

import { ROLE_LABELS, displayName } from "../call.js";
import { clear, h, icon, initials } from "./dom.js";

class VideoTile {
  constructor({ local = false }) {
    this.local = local;
    this.video = h("video", { autoplay: true, playsinline: true, "aria-hidden": "true" });
    this.video.muted = local; // never play our own microphone back
    this.avatar = h("div", { class: "tile-avatar", "aria-hidden": "true" });
    this.name = h("span", { class: "tile-name" });
    this.role = h("span", { class: "tile-role" });
    this.micOff = h("span", { class: "tile-badge badge-muted", title: "Microphone off" }, icon("mic-off", { size: 16 }), h("span", { class: "sr-only", text: "Microphone off" }));
    this.presenting = h("span", { class: "tile-badge badge-screen" }, icon("monitor", { size: 16 }), h("span", { text: "Presenting" }));
    // Audio first: over the picture, so the tile keeps its size (docs/signaling.md).
    this.weak = h("span", { class: "tile-badge badge-weak", role: "status", hidden: true, text: "Video paused: weak connection" });
    this.soundButton = h(
      "button",
      { type: "button", class: "tile-sound", hidden: true, onclick: () => this._play() },
      icon("volume", { size: 18 }),
      "Turn on sound",
    );
    this.el = h(
      "figure",
      { class: `tile ${local ? "tile-local" : "tile-remote"}`, role: "group" },
      this.video,
      this.avatar,
      h("figcaption", { class: "tile-caption" }, this.name, this.role, this.micOff),
      this.presenting,
      this.weak,
      this.soundButton,
    );
    this._trackIds = "";
  }

  update({ name, role, audio, video, screen, tracks, stream, weak = false }) {
    const label = `${name}${role ? `, ${ROLE_LABELS[role] ?? role}` : ""}`;
    this.el.setAttribute("aria-label", this.local ? `Your video (${name})` : `Video of ${label}`);
    this.el.dataset.socketId = this.socketId ?? "";
    this.name.textContent = this.local ? `${name} (you)` : name;
    this.role.textContent = role ? ROLE_LABELS[role] ?? role : "";
    this.avatar.textContent = initials(name);
    this.micOff.hidden = audio !== false;
    this.presenting.hidden = !screen;
    this.weak.hidden = !weak;
    this.el.classList.toggle("is-screen", Boolean(screen));
    const showVideo = Boolean(video || screen);
    this.el.classList.toggle("video-off", !showVideo);
    const list = stream ? stream.getTracks() : [tracks?.audio, tracks?.video].filter(Boolean);
    const ids = list.map((t) => t.id).join(",");
    if (ids !== this._trackIds) {
      this._trackIds = ids;
      this.video.srcObject = list.length ? stream ?? new MediaStream(list) : null;
      if (list.length) this._play();
    }
  }

  _play() {
    const played = this.video.play();
    if (!played) return;
    played.then(
      () => {
        this.soundButton.hidden = true;
      },
      (err) => {
        // Autoplay with sound blocked until the person interacts with the page.
        if (err?.name === "NotAllowedError" && !this.local) this.soundButton.hidden = false;
      },
    );
  }

  destroy() {
    this.video.srcObject = null;
    this.el.remove();
  }
}

export class VideoDisplay {
  constructor(root) {
    this.root = root;
    this.remoteGrid = h("div", { class: "remote-grid" });
    this.empty = h("div", { class: "stage-empty", role: "status" });
    this.localTile = new VideoTile({ local: true });
    this.root.append(this.remoteGrid, this.empty, this.localTile.el);
    this.tiles = new Map(); // socketId → VideoTile
  }

  setLocal({ name, role, media, stream, weakVideo }) {
    const weak = Boolean(weakVideo?.up || weakVideo?.down);
    this.localTile.update({ name, role, audio: media.audio, video: media.video, screen: media.screen, stream, weak });
    this.localTile.el.classList.toggle("mirrored", !media.screen);
  }

  setRemotes(participants, { waitingFor, weakDown = false } = {}) {
    const seen = new Set();
    for (const p of participants) {
      seen.add(p.socketId);
      let tile = this.tiles.get(p.socketId);
      if (!tile) {
        tile = new VideoTile({ local: false });
        tile.socketId = p.socketId;
        this.tiles.set(p.socketId, tile);
        this.remoteGrid.append(tile.el);
      }
      tile.update({
        name: displayName(p),
        role: p.userRole,
        audio: p.media?.audio,
        video: p.media?.video && Boolean(p.tracks?.video),
        screen: p.media?.screen,
        tracks: p.tracks,
        weak: Boolean(weakDown || p.weakVideo?.up || p.weakVideo?.down),
      });
    }
    for (const [socketId, tile] of this.tiles) {
      if (!seen.has(socketId)) {
        tile.destroy();
        this.tiles.delete(socketId);
      }
    }
    this.remoteGrid.dataset.count = String(this.tiles.size);
    this.root.classList.toggle("is-alone", this.tiles.size === 0);
    clear(this.empty);
    this.empty.hidden = this.tiles.size > 0;
    if (this.tiles.size === 0) {
      this.empty.append(
        h("div", { class: "pulse", "aria-hidden": "true" }, initials(waitingFor || "?")),
        h("p", { text: waitingFor ? `Waiting for ${waitingFor} to join…` : "Waiting for the other participant to join…" }),
        h("p", { class: "muted", text: "They will appear here as soon as they connect." }),
      );
    }
  }

  clear() {
    for (const tile of this.tiles.values()) tile.destroy();
    this.tiles.clear();
    this.localTile.video.srcObject = null;
  }
}
