"""Call summaries that survive the process: checkpoints while a call runs, the final summary at
its end, and the recovery of calls whose node died (SIGKILL, a lost machine).

One document per call, key `{period: "call", roomId, startedAt}`, with a `status`:

* `in-progress` — a checkpoint, rewritten every checkpoint interval while the call runs (with
  `node`, `instance` and `checkpointAt`; `endedAt` is the checkpoint's time). Not counted in the
  aggregates.
* `complete` — the final summary, written over the checkpoint when the call ends (or the service
  stops); counted in the aggregates.
* `cut-short` — a checkpoint whose node is gone, closed by the recovery pass of any live node:
  `endedAt` stays the last checkpoint, `endReason` is `cut-short`; counted in the aggregates then.

Every transition is a compare-and-set in storage (`set_call_metrics_if`): a checkpoint only
creates or refreshes an `in-progress` document, a recovery only closes the exact checkpoint it
judged stale, so two nodes running the pass count a call once, and a node that was thought dead
cannot reopen a closed call. A final summary that finds its call cut short (its node lost the
shared state for longer than the staleness limit, yet lived) overwrites it with the full figures
but does not count it again. Counting follows the transition (at most once: a crash between
the two loses the count, never doubles it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from metrics.aggregates import AggregateRecorder, MetricsStore
from metrics.instruments import Instruments

log = logging.getLogger(__name__)

IN_PROGRESS = "in-progress"
COMPLETE = "complete"
CUT_SHORT = "cut-short"
DEFAULT_CHECKPOINT_INTERVAL = 30.0
DEFAULT_RECOVERY_INTERVAL = 60.0
# A checkpoint this many intervals old is no longer being refreshed by its owner.
STALE_AFTER_CHECKPOINTS = 2

LiveNodes = Callable[[], Awaitable[set[str]]]


def summary_key(summary: Mapping[str, Any]) -> dict[str, Any]:
    """One document per call: a room id can host several calls (everyone left, then rejoined)."""
    return {"period": "call", "roomId": summary["roomId"], "startedAt": summary["startedAt"]}


def with_status(summary: dict[str, Any]) -> dict[str, Any]:
    """A stored summary as readers see it (documents from before checkpoints were complete)."""
    summary.setdefault("status", COMPLETE)
    return summary


async def participant_users(store: MetricsStore, summary: dict[str, Any]) -> list[str]:
    """Attach the session id; return the user ids of the session's sides that took part."""
    summary.setdefault("sessionId", None)
    session = await store.find_session_by_room(summary["roomId"])
    if session is None:
        return []
    summary["sessionId"] = session.id
    roles = {s["role"] for s in summary.get("streams", ())}
    users = []
    if "client" in roles:
        users.append(session.client_id)
    if "psychologist" in roles:
        users.append(session.psychologist_id)
    return users


class SummaryLedger:
    """Writes one process's summaries and recovers the fleet's stale ones."""

    def __init__(
        self,
        store: Callable[[], MetricsStore | None],
        aggregates: AggregateRecorder,
        instruments: Instruments,
        *,
        node: str,
        instance: str,
        live_nodes: LiveNodes | None,
        checkpoint_interval: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._aggregates = aggregates
        self._instruments = instruments
        self.node = node
        self.instance = instance
        self._live_nodes = live_nodes
        self.checkpoint_interval = checkpoint_interval
        self._clock = clock
        # One writer at a time in this process: a call's checkpoint and its final summary
        # never race each other (the final always lands last).
        self._lock = asyncio.Lock()

    @property
    def _mine(self) -> dict[str, Any]:
        return {"node": self.node, "instance": self.instance}

    # -- the final summary --------------------------------------------------------------

    async def write_final(self, summary: dict[str, Any]) -> None:
        store = self._store()
        if store is None:
            self._instruments.call_summaries.labels("skipped").inc()
            return
        try:
            async with self._lock:
                counted = await self._write_final(store, summary)
        except Exception:
            self._instruments.call_summaries.labels("failed").inc()
            log.exception("storing the quality summary of call %s failed", summary["roomId"])
            return
        if counted:
            self._instruments.call_summaries.labels("stored").inc()

    async def _write_final(self, store: MetricsStore, summary: dict[str, Any]) -> bool:
        user_ids = await participant_users(store, summary)
        summary.update(status=COMPLETE, **self._mine)
        key = summary_key(summary)
        written = await store.set_call_metrics_if(
            key, summary, where={"status": [IN_PROGRESS]}, insert=True
        )
        if written is None:
            existing = await store.get_call_metrics(key)
            if existing is None or existing.get("status") != CUT_SHORT:
                log.warning("call %s already has a final summary: not written", key["roomId"])
                return False
            # Counted when it was cut short: keep the better figures, count nothing more.
            await store.set_call_metrics_if(key, summary, where={"status": [CUT_SHORT]})
            log.warning(
                "call %s was recovered as cut short while this node still held it (the shared "
                "state was unreachable?); its final summary replaces the checkpoint",
                key["roomId"],
            )
            return True
        await self._aggregates.record_call(summary, user_ids)
        return True

    # -- checkpoints --------------------------------------------------------------------

    async def write_checkpoints(self, summaries: list[dict[str, Any]]) -> int:
        """Store the in-progress summary of each open call; returns how many were written."""
        store = self._store()
        if store is None or not summaries:
            return 0
        written = 0
        async with self._lock:
            for summary in summaries:
                try:
                    await participant_users(store, summary)
                    # The snapshot's end is the checkpoint: where a cut-short call ends.
                    at = summary["endedAt"]
                    summary.update(status=IN_PROGRESS, checkpointAt=at, **self._mine)
                    # Never over a final or cut-short document (a late checkpoint, or a node
                    # taken for dead): the condition refuses it.
                    doc = await store.set_call_metrics_if(
                        summary_key(summary), summary, where={"status": [IN_PROGRESS]}, insert=True
                    )
                except Exception:
                    self._instruments.summary_checkpoints.labels("failed").inc()
                    log.exception("checkpointing the summary of call %s failed", summary["roomId"])
                    continue
                if doc is not None:
                    written += 1
                    self._instruments.summary_checkpoints.labels("stored").inc()
        return written

    # -- recovery -----------------------------------------------------------------------

    async def recover(self, open_calls: Collection[str]) -> int:
        """Close the stale checkpoints as cut short and count them; returns how many this pass
        closed. `open_calls`: the room ids this process holds (never stale)."""
        store = self._store()
        if store is None:
            return 0
        live: set[str] | None = None
        if self._live_nodes is not None:
            try:
                live = set(await self._live_nodes()) | {self.node}
            except Exception as exc:
                # Nobody can tell which nodes live: an outage must not end calls on paper.
                log.warning("recovery of cut-short summaries skipped: live nodes unknown (%s)", exc)
                return 0
        now = self._clock()
        limit = timedelta(seconds=STALE_AFTER_CHECKPOINTS * self.checkpoint_interval)
        closed = 0
        for doc in await store.find_call_metrics(
            {"period": "call", "status": IN_PROGRESS}, limit=10_000
        ):
            if not self._stale(doc, open_calls, live, now - limit):
                continue
            try:
                if await self._cut_short(store, doc, now):
                    closed += 1
            except Exception:
                log.exception("recovering the summary of call %s failed", doc.get("roomId"))
        return closed

    def _stale(
        self,
        doc: Mapping[str, Any],
        open_calls: Collection[str],
        live: set[str] | None,
        older_than: datetime,
    ) -> bool:
        if doc.get("instance") == self.instance and doc.get("roomId") in open_calls:
            return False
        checkpoint = doc.get("checkpointAt")
        if not isinstance(checkpoint, datetime) or _aware(checkpoint) > older_than:
            return False
        if live is None:  # one process: whatever it does not hold is over
            return True
        node = doc.get("node")
        # A node not live any more, or this node's id from an earlier process (a worker the
        # supervisor restarted) or from a call this process no longer holds.
        return node not in live or node == self.node

    async def _cut_short(self, store: MetricsStore, doc: dict[str, Any], now: datetime) -> bool:
        key = summary_key(doc)
        values = {
            "status": CUT_SHORT,
            "endReason": CUT_SHORT,
            "completed": int(doc.get("participantsWithMedia") or 0) >= 2,
            "recoveredAt": now,
            "recoveredBy": self.node,
        }
        # Only the very checkpoint judged stale: a fresh one means its owner lives after all;
        # of two nodes making this transition, one gets the document.
        cut = await store.set_call_metrics_if(
            key,
            values,
            where={"status": [IN_PROGRESS], "checkpointAt": [doc["checkpointAt"]]},
        )
        if cut is None:
            return False
        user_ids = await participant_users(store, cut)
        await self._aggregates.record_call(cut, user_ids)
        self._instruments.call_summaries.labels("cut_short").inc()
        log.warning(
            "call %s of node %s was cut short (no checkpoint since %s): summary recovered",
            cut["roomId"],
            cut.get("node"),
            cut["checkpointAt"],
        )
        return True


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
