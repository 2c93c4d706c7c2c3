// Network quality from RTCPeerConnection.getStats(): round-trip time, packet loss and bitrate,
// rated good / fair / poor. `rateQuality` is pure (unit-tested in the browser suite); the
// monitor samples both peer connections every couple of seconds and works on deltas.

import { Emitter } from "./events.js";

export const THRESHOLDS = {
  fair: { rttMs: 250, lossPct: 3, videoKbps: 150 },
  poor: { rttMs: 500, lossPct: 10, videoKbps: 40 },
};

/**
 * @param {{rttMs?: number|null, lossPct?: number|null, inboundVideoKbps?: number|null,
 *          expectingVideo?: boolean}} m
 * @returns {"good"|"fair"|"poor"|"unknown"}
 */
export function rateQuality({ rttMs = null, lossPct = null, inboundVideoKbps = null, expectingVideo = false }) {
  if (rttMs == null && lossPct == null) return "unknown";
  const { fair, poor } = THRESHOLDS;
  const video = expectingVideo && inboundVideoKbps != null ? inboundVideoKbps : null;
  if ((rttMs ?? 0) >= poor.rttMs || (lossPct ?? 0) >= poor.lossPct || (video != null && video < poor.videoKbps)) {
    return "poor";
  }
  if ((rttMs ?? 0) >= fair.rttMs || (lossPct ?? 0) >= fair.lossPct || (video != null && video < fair.videoKbps)) {
    return "fair";
  }
  return "good";
}

/** Sum the counters this module needs out of one getStats() report. */
export function summarize(report) {
  const out = {
    rttMs: null,
    inboundBytes: 0,
    inboundVideoBytes: 0,
    outboundBytes: 0,
    packetsReceived: 0,
    packetsLost: 0,
    remoteLossFraction: null,
    framesDecoded: 0,
  };
  const pairs = [];
  let selectedPairId = null;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) selectedPairId = s.selectedCandidatePairId;
    if (s.type === "candidate-pair") pairs.push(s);
    if (s.type === "inbound-rtp") {
      out.inboundBytes += s.bytesReceived ?? 0;
      out.packetsReceived += s.packetsReceived ?? 0;
      out.packetsLost += Math.max(0, s.packetsLost ?? 0);
      if (s.kind === "video") {
        out.inboundVideoBytes += s.bytesReceived ?? 0;
        out.framesDecoded += s.framesDecoded ?? 0;
      }
    }
    if (s.type === "outbound-rtp") out.outboundBytes += s.bytesSent ?? 0;
    if (s.type === "remote-inbound-rtp" && typeof s.fractionLost === "number") {
      out.remoteLossFraction = Math.max(out.remoteLossFraction ?? 0, s.fractionLost);
    }
  });
  const pair =
    pairs.find((p) => p.id === selectedPairId) ?? pairs.find((p) => p.nominated && p.state === "succeeded");
  if (pair && typeof pair.currentRoundTripTime === "number") out.rttMs = pair.currentRoundTripTime * 1000;
  return out;
}

export class QualityMonitor extends Emitter {
  /**
   * @param {() => RTCPeerConnection[]} getPeerConnections   [publisher, subscriber] (either may be missing)
   * @param {() => boolean} expectingVideo  whether some remote participant has their camera on
   */
  constructor(getPeerConnections, expectingVideo, intervalMs = 2000) {
    super();
    this.getPeerConnections = getPeerConnections;
    this.expectingVideo = expectingVideo;
    this.intervalMs = intervalMs;
    this.previous = null;
    this.latest = { level: "unknown" };
    this._timer = null;
  }

  start() {
    if (this._timer) return;
    this._timer = setInterval(() => void this.sample(), this.intervalMs);
  }

  stop() {
    clearInterval(this._timer);
    this._timer = null;
    this.previous = null;
  }

  async sample() {
    const pcs = this.getPeerConnections().filter((pc) => pc && pc.connectionState !== "closed");
    if (!pcs.length) return this.latest;
    const reports = await Promise.all(pcs.map((pc) => pc.getStats().then(summarize, () => null)));
    const parts = reports.filter(Boolean);
    const now = performance.now();
    const total = {
      at: now,
      inboundBytes: sum(parts, "inboundBytes"),
      inboundVideoBytes: sum(parts, "inboundVideoBytes"),
      outboundBytes: sum(parts, "outboundBytes"),
      packetsReceived: sum(parts, "packetsReceived"),
      packetsLost: sum(parts, "packetsLost"),
    };
    const rtts = parts.map((p) => p.rttMs).filter((v) => v != null);
    const rttMs = rtts.length ? Math.max(...rtts) : null;
    const prev = this.previous;
    this.previous = total;
    let lossPct = null;
    let downKbps = null;
    let upKbps = null;
    let inboundVideoKbps = null;
    if (prev && now > prev.at) {
      const seconds = (now - prev.at) / 1000;
      const received = total.packetsReceived - prev.packetsReceived;
      const lost = total.packetsLost - prev.packetsLost;
      lossPct = received + lost > 0 ? (100 * Math.max(0, lost)) / (received + lost) : 0;
      downKbps = Math.max(0, (8 * (total.inboundBytes - prev.inboundBytes)) / 1000 / seconds);
      upKbps = Math.max(0, (8 * (total.outboundBytes - prev.outboundBytes)) / 1000 / seconds);
      inboundVideoKbps = Math.max(0, (8 * (total.inboundVideoBytes - prev.inboundVideoBytes)) / 1000 / seconds);
    }
    const remoteLosses = parts.map((p) => p.remoteLossFraction).filter((v) => v != null);
    if (remoteLosses.length) lossPct = Math.max(lossPct ?? 0, ...remoteLosses.map((f) => f * 100));
    const level = rateQuality({ rttMs, lossPct, inboundVideoKbps, expectingVideo: this.expectingVideo() });
    this.latest = {
      level,
      rttMs,
      lossPct,
      downKbps,
      upKbps,
      inboundVideoKbps,
      packetsReceived: total.packetsReceived,
      framesDecoded: sum(parts, "framesDecoded"),
    };
    this.emit("sample", this.latest);
    return this.latest;
  }
}

function sum(parts, key) {
  return parts.reduce((acc, p) => acc + (p[key] ?? 0), 0);
}
