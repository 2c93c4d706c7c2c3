// The pre-call check of the waiting room: camera preview, microphone level, and a test of the
// network path the call will take, with a verdict (good / may be poor / blocked).
//
// It runs entirely in the page, against the ICE servers the call will use
// (GET /api/video-calls/config), so it needs no room and no server endpoint:
// - TURN configured: two local peer connections, both forced through TURN
//   (iceTransportPolicy "relay"), open a data channel and echo a message. That is a real
//   connection through the TURN server, over the same protocols the call would use; the
//   transport that carried it (UDP, or only TCP/TLS) decides the verdict.
// - STUN only: a server-reflexive candidate proves UDP reaches the outside.
// - Neither: the relay is reached through its host candidates on the local network: two local
//   peer connections over host candidates prove this browser can make a UDP WebRTC connection.
// The server's round trip (GET /healthz, not rate limited) downgrades a good verdict when slow.
// The relay's own media ports are only tested when the call starts (see docs/api.md).

const GATHER_TIMEOUT_MS = 6000;
const CONNECT_TIMEOUT_MS = 8000;
const SLOW_RTT_MS = 400;
const RTT_PROBES = 3;

export const VERDICTS = ["good", "poor", "blocked"];

function urlsOf(server) {
  return Array.isArray(server.urls) ? server.urls : [server.urls];
}

/** Which kinds of ICE server a config lists: {turn: [...servers], stun: bool, turnHosts: [...]} */
export function describeIceServers(iceServers = []) {
  const turn = [];
  const hosts = new Set();
  let stun = false;
  for (const server of iceServers) {
    const urls = urlsOf(server).filter((u) => typeof u === "string");
    if (urls.some((u) => /^turns?:/i.test(u))) {
      turn.push(server);
      for (const u of urls) {
        const m = /^turns?:([^:?]+)/i.exec(u);
        if (m) hosts.add(m[1]);
      }
    }
    if (urls.some((u) => /^stun:/i.test(u))) stun = true;
  }
  return { turn, stun, turnHosts: [...hosts] };
}

function candidateType(candidate) {
  if (candidate.type) return candidate.type;
  const m = / typ (\w+)/.exec(candidate.candidate ?? "");
  return m ? m[1] : "unknown";
}

/** Gather candidates of one peer connection (against `iceServers`) until complete or timeout. */
export async function gatherCandidates(iceServers, { timeoutMs = GATHER_TIMEOUT_MS } = {}) {
  const pc = new RTCPeerConnection({ iceServers });
  const found = [];
  try {
    pc.createDataChannel("precheck");
    const done = new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      pc.addEventListener("icecandidate", (ev) => {
        if (ev.candidate && ev.candidate.candidate) found.push(ev.candidate);
        else {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    await pc.setLocalDescription(await pc.createOffer());
    await done;
  } finally {
    pc.close();
  }
  return found.map((c) => ({ type: candidateType(c), protocol: c.protocol ?? null, relayProtocol: c.relayProtocol ?? null }));
}

/** Two local peer connections connected to each other; resolves {ok, rttMs, localType, relayProtocol}. */
export async function loopbackConnection(iceServers, { relayOnly = false, timeoutMs = CONNECT_TIMEOUT_MS } = {}) {
  const config = { iceServers, iceTransportPolicy: relayOnly ? "relay" : "all" };
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  const timers = [];
  try {
    a.addEventListener("icecandidate", (ev) => ev.candidate && b.addIceCandidate(ev.candidate).catch(() => {}));
    b.addEventListener("icecandidate", (ev) => ev.candidate && a.addIceCandidate(ev.candidate).catch(() => {}));
    const channel = a.createDataChannel("precheck");
    const echoed = new Promise((resolve, reject) => {
      timers.push(setTimeout(() => reject(new Error("timeout")), timeoutMs));
      b.addEventListener("datachannel", (ev) => {
        ev.channel.addEventListener("message", (m) => ev.channel.send(m.data));
      });
      channel.addEventListener("open", () => channel.send(String(performance.now())));
      channel.addEventListener("message", (m) => resolve(performance.now() - Number(m.data)));
      a.addEventListener("connectionstatechange", () => {
        if (a.connectionState === "failed") reject(new Error("failed"));
      });
    });
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    const rttMs = await echoed;
    const path = await selectedPath(a);
    return { ok: true, rttMs, ...path };
  } catch (err) {
    return { ok: false, error: String(err?.message ?? err) };
  } finally {
    for (const t of timers) clearTimeout(t);
    a.close();
    b.close();
  }
}

async function selectedPath(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s) => { if (s.type === "candidate-pair" && (s.selected || s.nominated) && s.state === "succeeded") pair = s; });
  const local = pair ? stats.get(pair.localCandidateId) : null;
  return {
    localType: local?.candidateType ?? null,
    protocol: local?.protocol ?? null,
    relayProtocol: local?.relayProtocol ?? null,
  };
}

/** Median round trip of GET /healthz in ms (null when unreachable). */
export async function serverRoundTrip(baseUrl = "", probes = RTT_PROBES) {
  const times = [];
  for (let i = 0; i < probes; i += 1) {
    const t0 = performance.now();
    try {
      const r = await fetch(`${baseUrl}/healthz`, { cache: "no-store" });
      await r.arrayBuffer();
      if (!r.ok && r.status !== 503) continue;
      times.push(performance.now() - t0);
    } catch {
      /* counted as missing */
    }
  }
  if (!times.length) return null;
  times.sort((x, y) => x - y);
  return times[Math.floor(times.length / 2)];
}

/** The verdict of the network test: {verdict, path, detail, ...measurements}. */
export async function testNetwork(iceServers, { baseUrl = "" } = {}) {
  const kinds = describeIceServers(iceServers);
  const rttMs = await serverRoundTrip(baseUrl);
  const result = { rttMs, turnHosts: kinds.turnHosts, turnConfigured: kinds.turn.length > 0 };
  if (rttMs == null) return { ...result, verdict: "blocked", path: "none", detail: "server-unreachable" };
  let verdict;
  if (kinds.turn.length) {
    // A real connection through TURN (UDP first: with several TURN URLs the browser prefers it).
    const viaTurn = await loopbackConnection(kinds.turn, { relayOnly: true });
    Object.assign(result, { loopback: viaTurn });
    if (!viaTurn.ok) return { ...result, verdict: "blocked", path: "none", detail: "turn-failed" };
    const proto = (viaTurn.relayProtocol ?? viaTurn.protocol ?? "").toLowerCase();
    result.path = `turn-${proto || "unknown"}`;
    verdict = proto === "udp" ? "good" : "poor";
    result.detail = verdict === "good" ? "turn-udp" : "turn-tcp-only";
  } else if (kinds.stun) {
    const candidates = await gatherCandidates(iceServers);
    result.candidates = candidates;
    const srflx = candidates.some((c) => c.type === "srflx");
    if (!srflx) return { ...result, verdict: "blocked", path: "none", detail: "no-udp" };
    result.path = "stun-udp";
    verdict = "good";
    result.detail = "udp";
  } else {
    const direct = await loopbackConnection([], { relayOnly: false });
    Object.assign(result, { loopback: direct });
    if (!direct.ok) return { ...result, verdict: "blocked", path: "none", detail: "no-webrtc" };
    result.path = `direct-${(direct.protocol ?? "udp").toLowerCase()}`;
    verdict = "good";
    result.detail = "direct";
  }
  if (verdict === "good" && rttMs > SLOW_RTT_MS) {
    verdict = "poor";
    result.detail = "slow-server";
  }
  return { ...result, verdict };
}

/** Microphone level 0..1 from an audio track, sampled by `onLevel` every `intervalMs`. */
export function levelMeter(stream, onLevel, { intervalMs = 100 } = {}) {
  const Ctx = window.AudioContext ?? window.webkitAudioContext;
  if (!Ctx || !stream.getAudioTracks().length) return { stop() {} };
  const ctx = new Ctx();
  const source = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const buffer = new Float32Array(analyser.fftSize);
  void ctx.resume?.();
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(buffer);
    let sum = 0;
    for (const v of buffer) sum += v * v;
    // RMS, scaled so speech at a normal distance fills most of the meter.
    onLevel(Math.min(1, Math.sqrt(sum / buffer.length) * 4));
  }, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      source.disconnect();
      void ctx.close();
    },
  };
}
