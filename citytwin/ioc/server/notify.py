"""NGSI-LD notifications: after each write, POST the changed entities to every matching subscriber.

Writes hand their `UpsertResult` to `Notifier.submit` from any thread and go on; one asyncio task on the
server's loop finds the matching subscriptions and sends with one shared httpx client, so a slow or dead
subscriber never holds up a write. A subscription's `throttling` is honoured by holding what changed
in the meantime and sending it once the period has passed (the newest state of each entity).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from citytwin.ioc.core import ldcontext
from citytwin.ioc.core.entities import to_document
from citytwin.ioc.core.model import Entity, Subscription

from . import ngsi_render as render

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0
MAX_QUEUE = 10_000
MAX_IN_FLIGHT = 16


def notification(sub: Subscription, entities: Sequence[Entity], at: datetime) -> tuple[dict[str, Any], dict[str, str]]:
    """The NGSI-LD Notification body for a subscriber, compacted with its context, and its headers."""
    try:
        context = ldcontext.resolve(sub.context)
    except ldcontext.ContextError:  # checked when subscribing; a context can only vanish with a code change
        context = ldcontext.resolve(None)
    data = [render.render_entity(to_document(e), context, sub.notify_attrs) for e in entities]
    body: dict[str, Any] = {"id": f"urn:ngsi-ld:Notification:{uuid.uuid4().hex}", "type": "Notification",
                            "subscriptionId": sub.id, "notifiedAt": render.iso(at), "data": data}
    if sub.accept == render.JSONLD:
        body["@context"] = sub.context if sub.context is not None else ldcontext.CORE_CONTEXT
        return body, {"Content-Type": render.JSONLD}
    link = sub.context if isinstance(sub.context, str) else ldcontext.CORE_CONTEXT
    return body, {"Content-Type": render.JSON,
                  "Link": f'<{link}>; rel="{render.LINK_REL}"; type="{render.JSONLD}"'}


class Notifier:
    """Sends notifications in the background; `start()` on the server's loop, `await stop()` at shutdown."""

    def __init__(self, ioc: Any, timeout_s: float = TIMEOUT_S):
        self.ioc = ioc
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._sends: set[asyncio.Task] = set()
        self._last_sent: dict[str, float] = {}  # subscription id → time.monotonic() of its last send
        self._held: dict[str, dict[str, Entity]] = {}  # throttled: subscription id → entity id → newest
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(MAX_QUEUE)
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        self._task = self._loop.create_task(self._run(), name="ngsi-ld-notifier")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._sends:  # let notifications already on their way finish
            _, late = await asyncio.wait(set(self._sends), timeout=self.timeout_s)
            for task in late:
                task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self._client.aclose()
        self._task = None
        self._loop = None

    def submit(self, result: Any) -> None:
        """Queue an UpsertResult for notification. Non-blocking; safe from any thread."""
        loop = self._loop
        if loop is None or not getattr(result, "changed", None):
            return
        try:
            loop.call_soon_threadsafe(self._enqueue, result)
        except RuntimeError:  # the loop has closed: the server is shutting down
            pass

    def _enqueue(self, result: Any) -> None:
        try:
            self._queue.put_nowait(result)
        except asyncio.QueueFull:
            log.warning("notification queue full: %d entity changes not notified", len(result.changed))

    async def _run(self) -> None:
        while True:
            result = await self._queue.get()
            try:
                matches = await asyncio.to_thread(self.ioc.notifications_for, result.changed)
            except Exception:
                log.exception("finding the subscriptions to notify failed")
                continue
            for sub, entities in matches:
                self._dispatch(sub, list(entities))

    def _dispatch(self, sub: Subscription, entities: list[Entity]) -> None:
        wait = sub.throttling_s - (time.monotonic() - self._last_sent.get(sub.id, -math.inf))
        if wait <= 0 and sub.id not in self._timers:
            self._send_now(sub, entities)
            return
        held = self._held.setdefault(sub.id, {})
        held.update({entity.id: entity for entity in entities})
        if sub.id not in self._timers:
            self._timers[sub.id] = self._loop.call_later(max(wait, 0.0), self._release, sub)

    def _release(self, sub: Subscription) -> None:
        self._timers.pop(sub.id, None)
        entities = list(self._held.pop(sub.id, {}).values())
        if entities:
            self._send_now(sub, entities)

    def _send_now(self, sub: Subscription, entities: list[Entity]) -> None:
        self._last_sent[sub.id] = time.monotonic()
        task = self._loop.create_task(self._send(sub, entities))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, sub: Subscription, entities: list[Entity]) -> None:
        async with self._slots:
            ok = False
            try:
                body, headers = notification(sub, entities, datetime.now(UTC))
                response = await self._client.post(sub.endpoint, content=json.dumps(body), headers=headers)
                ok = 200 <= response.status_code < 300
                if not ok:
                    log.warning("subscriber %s answered %d", _where(sub.endpoint), response.status_code)
            except httpx.HTTPError as exc:
                log.warning("notifying %s failed: %s", _where(sub.endpoint), type(exc).__name__)
            except Exception:
                log.exception("building or sending a notification for %s failed", sub.id)
            if ok:
                self.sent += 1
            else:
                self.failed += 1
            try:
                await asyncio.to_thread(self.ioc.record_notification, sub.id, ok, datetime.now(UTC))
            except Exception:  # deleted meanwhile, or the store is closing: nothing more to record
                log.debug("could not record the notification of %s", sub.id, exc_info=True)


def _where(endpoint: str) -> str:
    # Host and path only: an endpoint URL may carry credentials or tokens in its userinfo or query.
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"
