// CallControls: microphone, camera, screen share, participants, end call. Native buttons (keyboard
// operable by default) with labels that say what pressing them does.

import { h, icon } from "./dom.js";

function controlButton({ id, onClick, className = "" }) {
  const iconSlot = h("span", { class: "ctl-icon" });
  const text = h("span", { class: "ctl-text" });
  const button = h("button", { id, type: "button", class: `ctl ${className}`, onclick: onClick }, iconSlot, text);
  return { button, iconSlot, text };
}

export class CallControls {
  constructor(root, handlers) {
    this.root = root;
    this.mic = controlButton({ id: "btn-mic", onClick: handlers.onToggleAudio });
    this.camera = controlButton({ id: "btn-camera", onClick: handlers.onToggleVideo });
    this.screen = controlButton({ id: "btn-screen", onClick: handlers.onToggleScreen, className: "ctl-screen" });
    this.people = controlButton({ id: "btn-participants", onClick: handlers.onToggleParticipants, className: "ctl-people" });
    this.endCall = controlButton({ id: "btn-end", onClick: handlers.onEnd, className: "ctl-end" });
    this.people.button.setAttribute("aria-controls", "participants");
    this.endCall.iconSlot.append(icon("phone-off"));
    this.endCall.text.textContent = "End call";
    this.endCall.button.setAttribute("aria-label", "End call");
    this.people.iconSlot.append(icon("users"));
    if (!navigator.mediaDevices?.getDisplayMedia && !window.__smilingTest?.fakeScreen) {
      this.screen.button.hidden = true; // phones: no screen capture
    }
    root.append(
      h(
        "div",
        { class: "controls-inner", role: "toolbar", "aria-label": "Call controls" },
        this.mic.button,
        this.camera.button,
        this.screen.button,
        this.people.button,
        this.endCall.button,
      ),
    );
  }

  update({ audio, video, screen, hasMicrophone, participantsOpen, participantCount, busy }) {
    this._set(this.mic, {
      on: audio,
      iconName: audio ? "mic" : "mic-off",
      text: audio ? "Mute" : "Unmute",
      label: audio ? "Mute microphone" : "Unmute microphone",
      disabled: !hasMicrophone,
    });
    this._set(this.camera, {
      on: video,
      iconName: video ? "video" : "video-off",
      text: video ? "Stop video" : "Start video",
      label: video ? "Turn camera off" : "Turn camera on",
      disabled: busy,
    });
    this._set(this.screen, {
      on: !screen,
      iconName: "monitor",
      text: screen ? "Stop sharing" : "Share screen",
      label: screen ? "Stop sharing your screen" : "Share your screen",
      active: screen,
      disabled: busy,
    });
    this.people.text.textContent = `People (${participantCount})`;
    this.people.button.setAttribute("aria-label", `${participantsOpen ? "Hide" : "Show"} participants (${participantCount})`);
    this.people.button.setAttribute("aria-expanded", String(Boolean(participantsOpen)));
  }

  _set(control, { on, iconName, text, label, active = false, disabled = false }) {
    const { button, iconSlot } = control;
    if (button.dataset.icon !== iconName) {
      iconSlot.replaceChildren(icon(iconName));
      button.dataset.icon = iconName;
    }
    control.text.textContent = text;
    button.setAttribute("aria-label", label);
    button.classList.toggle("is-off", !on);
    button.classList.toggle("is-active", active);
    button.disabled = Boolean(disabled);
  }
}
