// NetworkQualityIndicator: signal bars (good / fair / poor) from getStats(); the disclosure shows
// the numbers behind the rating (round-trip time, packet loss, bitrate).

import { h } from "./dom.js";

const LABELS = { good: "Good", fair: "Fair", poor: "Poor", unknown: "Measuring" };

function fmt(value, unit, digits = 0) {
  return value == null || Number.isNaN(value) ? "—" : `${value.toFixed(digits)} ${unit}`;
}

function kbps(value) {
  if (value == null) return "—";
  return value >= 1000 ? `${(value / 1000).toFixed(1)} Mbps` : `${Math.round(value)} kbps`;
}

export class NetworkQualityIndicator {
  constructor(root) {
    this.bars = h("span", { class: "bars", "aria-hidden": "true" }, h("i"), h("i"), h("i"));
    this.label = h("span", { class: "quality-label" });
    this.summary = h("summary", { class: "quality-summary" }, this.bars, this.label);
    this.rows = {
      rtt: h("dd"),
      loss: h("dd"),
      down: h("dd"),
      up: h("dd"),
    };
    this.el = h(
      "details",
      { class: "quality", id: "network-quality" },
      this.summary,
      h(
        "dl",
        { class: "quality-details" },
        h("dt", { text: "Round trip" }),
        this.rows.rtt,
        h("dt", { text: "Packet loss" }),
        this.rows.loss,
        h("dt", { text: "Receiving" }),
        this.rows.down,
        h("dt", { text: "Sending" }),
        this.rows.up,
      ),
    );
    this.el.hidden = true;
    root.append(this.el);
    this.update({ level: "unknown" });
  }

  update(sample) {
    const level = sample?.level ?? "unknown";
    this.el.dataset.level = level;
    this.label.textContent = LABELS[level];
    this.summary.setAttribute("aria-label", `Network quality: ${LABELS[level]}. Show details`);
    this.rows.rtt.textContent = fmt(sample?.rttMs, "ms");
    this.rows.loss.textContent = fmt(sample?.lossPct, "%", 1);
    this.rows.down.textContent = kbps(sample?.downKbps);
    this.rows.up.textContent = kbps(sample?.upKbps);
  }

  show(visible) {
    this.el.hidden = !visible;
  }
}
