"""The sync queue: one small message per "sync this user", read by the queue-triggered worker.

Fan-out as the Azure Functions docs recommend: the timer and the webhook only enqueue; the
queue trigger (``function_app.sync_worker``) syncs one user per message, at least once, with a
poison queue after ``maxDequeueCount`` failures (host.json). Messages are deliberately thin
(user and trigger): what to do is in the user's :class:`~sync_core.state.base.SyncRequest`
row, which coalesces every trigger into at most one queued message per user.

Encoding: the Functions queue trigger expects base64 message text by default
(``extensions.queues.messageEncoding``), while the ``azure-storage-queue`` client sends
text as is unless given ``TextBase64EncodePolicy`` — so the Azure queue always encodes.

Backends by URL (``DAVBRIDGE_QUEUE_URL``): ``memory:`` (embedded default: an in-process list
for the CLI and tests), ``azurequeue:https://<account>.queue.core.windows.net`` (managed
identity) or ``azurequeue:<connection string>`` (Azurite, keys).
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from typing import Any, Protocol

#: Triggers a sync can come from (status and audit show them).
TRIGGERS = frozenset({"timer", "webhook", "lifecycle", "manual", "retry"})
#: A message body larger than this is not ours.
MAX_MESSAGE_BYTES = 4096


class BadMessage(ValueError):
    """A queue message that is not a davbridge sync message (dropped, never retried)."""


@dataclass(frozen=True)
class SyncMessage:
    """"Sync this user": the queue message body (JSON, then base64 on the wire)."""

    upn: str
    trigger: str

    def encode(self) -> str:
        return json.dumps({"upn": self.upn, "trigger": self.trigger}, sort_keys=True)

    @classmethod
    def decode(cls, body: bytes | str) -> SyncMessage:
        """Parse a message body (already base64-decoded by the host); :class:`BadMessage`
        for anything that is not a well-formed sync message."""
        raw = body.encode("utf-8") if isinstance(body, str) else body
        if len(raw) > MAX_MESSAGE_BYTES:
            raise BadMessage(f"message of {len(raw)} bytes is too large")
        try:
            data: Any = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadMessage("message is not JSON") from exc
        if not isinstance(data, dict):
            raise BadMessage("message is not a JSON object")
        upn, trigger = data.get("upn"), data.get("trigger")
        if not isinstance(upn, str) or not 0 < len(upn) <= 320 or "@" not in upn:
            raise BadMessage("message has no valid user")
        if trigger not in TRIGGERS:
            raise BadMessage("message has an unknown trigger")
        return cls(upn, str(trigger))


class SyncQueue(Protocol):
    def send(self, message: SyncMessage, *, delay_seconds: int = 0) -> None: ...


class MemorySyncQueue:
    """In-process queue (embedded default): messages wait in a list until drained."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[tuple[SyncMessage, int]] = []

    def send(self, message: SyncMessage, *, delay_seconds: int = 0) -> None:
        with self._lock:
            self._messages.append((message, delay_seconds))

    def drain(self) -> list[SyncMessage]:
        with self._lock:
            taken, self._messages = self._messages, []
        return [m for m, _ in taken]

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)


class AzureSyncQueue:
    """Azure Storage queue (or Azurite) through ``azure-storage-queue``, base64-encoded."""

    def __init__(self, target: str, queue_name: str, *, credential: Any = None) -> None:
        from azure.storage.queue import QueueClient, TextBase64EncodePolicy

        from sync_core.http_sessions import azure_transport

        encode = TextBase64EncodePolicy()
        if target.startswith("https://") or target.startswith("http://"):
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            self._client = QueueClient(target, queue_name, credential=credential, message_encode_policy=encode,
                                       transport=azure_transport())
        else:
            self._client = QueueClient.from_connection_string(target, queue_name, message_encode_policy=encode,
                                                               transport=azure_transport())
        self._ready = False
        self._lock = threading.Lock()

    def _ensure_queue(self) -> None:
        if self._ready:
            return
        from azure.core.exceptions import ResourceExistsError

        with self._lock:
            if not self._ready:
                with contextlib.suppress(ResourceExistsError):
                    self._client.create_queue()
                self._ready = True

    def send(self, message: SyncMessage, *, delay_seconds: int = 0) -> None:
        self._ensure_queue()
        self._client.send_message(message.encode(), visibility_timeout=delay_seconds or None)


def open_queue(url: str, queue_name: str) -> SyncQueue:
    """The queue named by ``DAVBRIDGE_QUEUE_URL`` (see the module docstring)."""
    if url == "memory:":
        return MemorySyncQueue()
    if url.startswith("azurequeue:"):
        return AzureSyncQueue(url[len("azurequeue:"):], queue_name)
    raise ValueError(f"unsupported queue URL scheme: {url.split(':', 1)[0]!r}")
