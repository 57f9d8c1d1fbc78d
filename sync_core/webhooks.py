"""Microsoft Graph change notifications: validation handshake, clientState, payload parsing.

Pure functions (no Functions SDK, no I/O) used by ``handlers.py``:

- Validation (Graph "Set up notifications for changes in resource data", *notification
  endpoint validation*): Graph POSTs ``?validationToken=<token>`` and expects, within 10 s,
  200 with ``Content-Type: text/plain`` and the *decoded* token as the body. The token is
  answered only as plain text (never HTML, ``nosniff``), and only if it is plausibly Graph's.
- ``clientState`` is the shared secret Graph echoes in every notification. davbridge sets it
  to an HMAC-SHA256 of the user under a key held in the secrets store, so nothing secret is
  kept in tables and a spoofed notification is rejected by a constant-time comparison.
- Payloads are ``changeNotificationCollection`` (``{"value": [changeNotification]}``); every
  item is checked on its own (Graph: "validate the clientState of every notification").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import unicodedata
from dataclasses import dataclass
from typing import Any

#: A notification POST larger than this is refused unread (Graph's are a few KiB).
MAX_NOTIFICATION_BYTES = 1024 * 1024
#: Graph's validation tokens are short; anything longer is not Graph.
MAX_VALIDATION_TOKEN = 1024
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})


class BadNotification(ValueError):
    """The body is not a change-notification collection."""


@dataclass(frozen=True)
class Notification:
    """One item of a notification POST, as far as davbridge needs it."""

    subscription_id: str
    client_state: str
    change_type: str | None = None
    lifecycle_event: str | None = None


def validation_answer(token: str) -> str | None:
    """The body to answer a validation request with, or None when ``token`` is not one
    Graph could have sent (too long or containing control characters)."""
    if not token or len(token) > MAX_VALIDATION_TOKEN:
        return None
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in token):
        return None  # control, format, surrogate and line-break characters: never Graph's
    return token


def client_state(key: str, upn: str) -> str:
    """The ``clientState`` davbridge gives ``upn``'s subscription (<= 128 characters)."""
    mac = hmac.new(key.encode("utf-8"), b"davbridge-client-state|" + upn.casefold().encode("utf-8"),
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def client_state_matches(key: str, upn: str, given: str) -> bool:
    """Constant-time check of a notification's ``clientState`` (hmac.compare_digest)."""
    return hmac.compare_digest(client_state(key, upn).encode("ascii"), given.encode("utf-8", "replace"))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_notifications(body: bytes) -> list[Notification]:
    """The items of a ``changeNotificationCollection``; :class:`BadNotification` when the body
    is too large or not that shape. Items without a subscription id are dropped."""
    if len(body) > MAX_NOTIFICATION_BYTES:
        raise BadNotification("notification body too large")
    try:
        data: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise BadNotification("notification body is not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("value"), list):
        raise BadNotification("notification body has no 'value' array")
    items: list[Notification] = []
    for raw in data["value"]:
        if not isinstance(raw, dict):
            continue
        sub_id, state = raw.get("subscriptionId"), raw.get("clientState")
        if not isinstance(sub_id, str) or not 0 < len(sub_id) <= 64 or not isinstance(state, str):
            continue
        if not _encodable(sub_id) or not _encodable(state):
            continue  # lone surrogates from \ud800-style escapes: not Graph's
        change = raw.get("changeType")
        event = raw.get("lifecycleEvent")
        items.append(Notification(
            sub_id, state[:256],
            change if isinstance(change, str) else None,
            event if isinstance(event, str) and event in LIFECYCLE_EVENTS else None,
        ))
    return items
