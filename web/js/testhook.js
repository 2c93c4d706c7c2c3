// window.smilingCall: a read-only view of the call for automated tests and support staff
// (state, participants, last error code). Tests still verify media through getStats().

export function installTestHook(app) {
  const hook = {
    get phase() {
      return app.session?.phase ?? "idle";
    },
    /** connecting | connected | reconnecting | failed, or the page's phase otherwise. */
    get state() {
      return app.session?.phase ?? (document.body.dataset.view === "signin" ? "signin" : "idle");
    },
    get view() {
      return document.body.dataset.view ?? null;
    },
    /** The waiting room's pre-call check: {camera, microphone, level, maxLevel, levelChanges, verdict, network}. */
    get precheck() {
      const check = app.waitingRoom?.precheck;
      return check ? JSON.parse(JSON.stringify(check.state)) : null;
    },
    get sessionId() {
      return app.session?.sessionId ?? null;
    },
    get roomId() {
      return app.session?.room?.roomId ?? null;
    },
    get local() {
      const s = app.session;
      return s ? { ...s.local, media: s.media.state() } : null;
    },
    get participants() {
      const s = app.session;
      if (!s) return [];
      return [...s.participants.values()].map((p) => ({
        socketId: p.socketId,
        userId: p.userId,
        userName: p.userName,
        userRole: p.userRole,
        media: { ...p.media },
        hasVideoTrack: Boolean(p.tracks?.video),
        hasAudioTrack: Boolean(p.tracks?.audio),
        weakVideo: p.weakVideo ? { ...p.weakVideo } : null,
      }));
    },
    get lastErrorCode() {
      return app.session?.lastErrorCode ?? null;
    },
    get error() {
      const e = app.session?.error;
      return e ? { code: e.code, message: e.message } : null;
    },
    get waiting() {
      const w = app.session?.waiting;
      return w ? { opensAt: w.opensAt?.toISOString() ?? null, startsAt: w.startsAt?.toISOString() ?? null } : null;
    },
    get summary() {
      const s = app.session?.summary;
      return s ? { seconds: s.seconds, minutes: s.minutes, status: s.status, error: s.error?.code ?? null, endedBy: s.endedBy ?? null } : null;
    },
    get quality() {
      return app.session?.quality.latest ?? null;
    },
    /** End-to-end encryption: {policy, mode, code, keyId, peers, frames…}, or {mode: "off"}. */
    get e2ee() {
      const s = app.session;
      if (!s) return null;
      return s.e2ee?.state() ?? { policy: s.e2eePolicy, mode: s.e2eePolicy === "off" ? "off" : "none" };
    },
    /** Only on a page opened with ?e2eeTestKeys=1 (tests): the raw key material it holds. */
    e2eeTestKeys() {
      return app.session?.e2ee?.exportKeysForTest() ?? null;
    },
    get reconnects() {
      return app.session?.reconnects ?? 0;
    },
    get log() {
      return app.session?.log ?? [];
    },
    /** The live peer connections [publisher, subscriber] (for getStats in tests). */
    peerConnections() {
      return [app.session?.publisher?.pc, app.session?.subscriber?.pc].filter(Boolean);
    },
    /** Simulate the WebSocket dropping (as on a network change): the call must reconnect. */
    dropConnection() {
      app.session?.signaling?.simulateDrop();
    },
    recheck() {
      app.session?.recheck();
    },
  };
  Object.defineProperty(window, "smilingCall", { value: hook, configurable: true });
  return hook;
}
