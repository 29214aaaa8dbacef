"""Getting a live IOC ready to be driven, over its own HTTP API: device keys, an operator key, a subscription.

The admin API (`POST /admin/v1/keys`, reference IOC) makes one key per request, so a fleet's keys go over
one keep-alive client, a few requests at a time. Errors name the URL and what the IOC answered, never a
key (keys travel in the `X-API-Key` header and in the answers' bodies, which are not quoted).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from citytwin.ioc.core import ldcontext

ADMIN_KEYS = "/admin/v1/keys"
SUBSCRIPTIONS = "/ngsi-ld/v1/subscriptions"
TIMEOUT_S = 10.0
DEVICE_RATE_PER_S = 1_000_000.0  # the admin API's ceiling: the driver, not the IOC's limiter, sets the pace
PARALLEL = 4  # requests in flight while making a fleet's keys (the database takes them one at a time anyway)
MAX_RETRIES = 5  # per request, on 429 (the key's own rate limit; nothing was made, so a retry is safe)
MAX_RETRY_WAIT_S = 5.0
# The Smart Data Models contexts the twin's devices write with: short names (FloodMonitoring) resolve to the
# IRIs the reference IOC stores, and notifications come back with the same short names.
DEFAULT_CONTEXT: list[str] = list(ldcontext.ALL_SDM)


def _shown(url: str) -> str:
    """The URL as errors show it: no userinfo, no query (either may carry a secret)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _endpoint(base_url: str, path: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected the IOC's http(s) base URL, got {_shown(base_url)!r}")
    return base_url.rstrip("/") + path


def _client(timeout_s: float) -> httpx.Client:
    limits = httpx.Limits(max_connections=PARALLEL, max_keepalive_connections=PARALLEL)
    return httpx.Client(timeout=timeout_s, limits=limits, follow_redirects=False)


def _why(response: httpx.Response) -> str:
    """What the IOC said was wrong, from any of its error shapes; short."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        text = body.get("detail") or body.get("title") or body.get("description") or ""
    elif isinstance(body, list) and body and isinstance(body[0], dict):
        text = body[0].get("description", "")
    else:
        text = ""
    return str(text)[:200]


def _post(client: httpx.Client, url: str, key: str, body: Any, content_type: str = "application/json",
          ok: tuple[int, ...] = (201,)) -> httpx.Response:
    """POST with the key in X-API-Key; retries a 429 after its Retry-After (bounded); raises ConnectionError
    (unreachable, timed out) or ValueError (any other answer) naming the URL."""
    headers = {"X-API-Key": key, "Content-Type": content_type, "Accept": "application/json"}
    content = json.dumps(body).encode()
    for attempt in range(MAX_RETRIES + 1):
        try:
            response = client.post(url, content=content, headers=headers)
        except httpx.TimeoutException:
            raise ConnectionError(f"POST {_shown(url)}: no answer within {client.timeout.read} s") from None
        except httpx.TransportError as exc:
            raise ConnectionError(f"POST {_shown(url)}: cannot reach the IOC ({type(exc).__name__})") from None
        if response.status_code in ok:
            return response
        if response.status_code == 429 and attempt < MAX_RETRIES:
            time.sleep(_retry_after(response))
            continue
        break
    raise ValueError(f"POST {_shown(url)} answered {response.status_code}: {_why(response)}")


def _retry_after(response: httpx.Response) -> float:
    try:
        wait = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.05), MAX_RETRY_WAIT_S)


def _new_key(client: httpx.Client, base_url: str, admin_key: str, body: dict[str, Any]) -> str:
    url = _endpoint(base_url, ADMIN_KEYS)
    answer = _post(client, url, admin_key, body).json()
    key = answer.get("key") if isinstance(answer, dict) else None
    if not isinstance(key, str) or not key:
        raise ValueError(f"POST {_shown(url)} answered 201 without a key in its body")
    return key


# -- the API -------------------------------------------------------------------------------------------------
def create_key(base_url: str, admin_key: str, role: str, label: str = "", *,
               rate_per_s: float | None = None, timeout_s: float = TIMEOUT_S) -> str:
    """A new key of `role` (citizen, operator, admin; devices: `create_device_keys`); the plain key."""
    body: dict[str, Any] = {"role": role, "label": label}
    if rate_per_s is not None:
        body["rate_per_s"] = rate_per_s
    with _client(timeout_s) as client:
        return _new_key(client, base_url, admin_key, body)


def create_device_keys(base_url: str, admin_key: str, devices: Sequence[tuple[str, str]], *,
                       rate_per_s: float = DEVICE_RATE_PER_S, label: str = "citytwin drive",
                       timeout_s: float = TIMEOUT_S, parallel: int = PARALLEL) -> dict[str, str]:
    """A device key per (device id, entity type short name): {device id: plain key}. The key is the device's
    IoT Agent JSON apikey and its NGSI-LD write key; a device may write only its own entity."""
    seen: set[str] = set()
    for device_id, entity_type in devices:
        if not device_id or not entity_type:
            raise ValueError(f"each device needs an id and an entity type, got {(device_id, entity_type)!r}")
        if device_id in seen:
            raise ValueError(f"device {device_id!r} is listed twice")
        seen.add(device_id)
    if not devices:
        return {}
    _endpoint(base_url, ADMIN_KEYS)  # a bad URL fails here once, not once per device

    failed = threading.Event()

    def make(client: httpx.Client, device: tuple[str, str]) -> tuple[str, str | None]:
        device_id, entity_type = device
        if failed.is_set():  # one failed: the rest are not worth asking for
            return device_id, None
        body = {"role": "device", "label": f"{label} {device_id}"[:200], "device_id": device_id,
                "entity_type": entity_type, "rate_per_s": rate_per_s}
        try:
            return device_id, _new_key(client, base_url, admin_key, body)
        except Exception:
            failed.set()
            raise

    with _client(timeout_s) as client:
        # The first alone: a wrong key or URL fails once, before a fleet's worth of requests is queued.
        first = make(client, devices[0])
        with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="provision") as pool:
            rest = list(pool.map(lambda device: make(client, device), devices[1:]))
    return {device_id: key for device_id, key in [first, *rest] if key is not None}


def subscribe(base_url: str, key: str, entity_types: Sequence[str], notify_url: str, context: Any = None, *,
              timeout_s: float = TIMEOUT_S) -> str:
    """An NGSI-LD subscription to every change of entities of `entity_types` (short names in `context`;
    default: the Smart Data Models contexts), notified in normalized format to `notify_url`. Needs an
    operator (or admin) key on the reference IOC. The subscription id."""
    if not entity_types:
        raise ValueError("subscribe: give at least one entity type")
    parts = urlsplit(notify_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"notify_url must be an http(s) URL, got {_shown(notify_url)!r}")
    url = _endpoint(base_url, SUBSCRIPTIONS)
    sub_id = f"urn:ngsi-ld:Subscription:citytwin-drive-{uuid.uuid4().hex}"
    body = {"id": sub_id, "type": "Subscription", "entities": [{"type": t} for t in entity_types],
            "notification": {"format": "normalized", "endpoint": {"uri": notify_url, "accept": "application/json"}},
            "@context": DEFAULT_CONTEXT if context is None else context}
    with _client(timeout_s) as client:
        response = _post(client, url, key, body, "application/ld+json", ok=(201,))
    location = response.headers.get("Location", "")
    return location.rsplit("/", 1)[-1] if location.rsplit("/", 1)[-1].startswith("urn:") else sub_id


def unsubscribe(base_url: str, key: str, subscription_id: str, *, timeout_s: float = TIMEOUT_S) -> bool:
    """Delete a subscription made by `subscribe`; False when the IOC no longer has it."""
    url = _endpoint(base_url, f"{SUBSCRIPTIONS}/{subscription_id}")
    try:
        with _client(timeout_s) as client:
            response = client.delete(url, headers={"X-API-Key": key})
    except httpx.TimeoutException:
        raise ConnectionError(f"DELETE {_shown(url)}: no answer within {timeout_s} s") from None
    except httpx.TransportError as exc:
        raise ConnectionError(f"DELETE {_shown(url)}: cannot reach the IOC ({type(exc).__name__})") from None
    if response.status_code == 404:
        return False
    if response.status_code != 204:
        raise ValueError(f"DELETE {_shown(url)} answered {response.status_code}: {_why(response)}")
    return True
