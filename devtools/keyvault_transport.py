"""An in-memory Azure Key Vault (secrets data plane) behind azure-core's pluggable sync transport.

``SecretClient(vault_url, credential, transport=FakeKeyVaultTransport(vault_url))`` runs the real SDK
pipeline -- serialisation, the Key Vault challenge-authentication policy, error mapping, the
recover poller -- against this fake instead of the network.  Behaviour follows the Key Vault REST
reference (secrets, api-version 7.x and the 2025/2026 versions azure-keyvault-secrets 4.12 sends):

* **Challenge authentication** (Key Vault "authentication, requests and responses"): a request
  without ``Authorization: Bearer <token>`` gets ``401`` with
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="https://vault.azure.net"``; the SDK then asks its credential for a token for
  ``https://vault.azure.net/.default`` in that tenant and resends.  A token the vault does not
  accept also gets ``401`` (with ``error="invalid_token"``).
* ``PUT /secrets/{name}`` creates a new version (body ``value``, ``attributes.enabled``, ``tags``,
  ``contentType``).  Values are limited to 25 KB (25,600 bytes) -> ``400 BadParameter``; at most 15
  tags; contentType at most 255 characters.  Empty values are accepted, as by the real service.
* ``GET /secrets/{name}/[{version}]`` (empty version = latest).  A disabled version answers
  ``403 Forbidden`` with inner code ``SecretDisabled`` ("Operation get is not allowed on a
  disabled secret.").
* ``PATCH /secrets/{name}/[{version}]`` updates attributes, tags, contentType (never the value).
* ``DELETE /secrets/{name}`` soft-deletes (soft-delete is always on): the secret moves to the
  deleted collection and its name is blocked -- a ``PUT`` then gets ``409 Conflict`` with inner code
  ``ObjectIsDeletedButRecoverable`` until it is recovered or purged.
* ``GET /deletedsecrets/{name}``, ``POST /deletedsecrets/{name}/recover`` (recovery completes
  asynchronously: the next ``recovery_polls`` GETs of the secret still answer 404, which is what
  the SDK's recover poller waits out), ``DELETE /deletedsecrets/{name}`` (purge).
* Names: 1-127 characters of ``0-9a-zA-Z-`` (else ``400 BadParameter``), compared
  case-insensitively as Key Vault does.
* Permissions: ``permissions`` holds the data-plane operations the caller may perform; a missing
  one answers ``403 Forbidden`` with inner code ``ForbiddenByRbac`` (the RBAC denial).

Every request is recorded in ``requests`` (method, path, decoded secret name, status) so tests can
assert exactly what was sent.  ``sleep()`` (used by the SDK's pollers) records the duration and
returns at once.  Thread-safe.
"""

from __future__ import annotations

import http
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest, HttpResponse
from azure.core.utils import case_insensitive_dict

DEFAULT_VAULT_URL = "https://davbridge-test.vault.azure.net"
DEFAULT_TENANT_ID = "72f988bf-0000-4000-8000-00000000d4b1"
KEY_VAULT_RESOURCE = "https://vault.azure.net"
MAX_VALUE_BYTES = 25 * 1024
MAX_TAGS = 15
MAX_CONTENT_TYPE = 255
SUPPORTED_API_VERSIONS = frozenset(
    {"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"}
)
ALL_PERMISSIONS = frozenset({"get", "set", "update", "delete", "recover", "purge"})
_VALID_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
# RBAC data actions named in the 403 message (Key Vault Secrets Officer grants all of them).
_DATA_ACTIONS = {
    "get": "Microsoft.KeyVault/vaults/secrets/getSecret/action",
    "set": "Microsoft.KeyVault/vaults/secrets/setSecret/action",
    "update": "Microsoft.KeyVault/vaults/secrets/update/action",
    "delete": "Microsoft.KeyVault/vaults/secrets/delete",
    "recover": "Microsoft.KeyVault/vaults/secrets/recover/action",
    "purge": "Microsoft.KeyVault/vaults/secrets/purge/action",
}
_RECOVERABLE_DAYS = 90


# --------------------------------------------------------------------------- credential
@dataclass(frozen=True)
class TokenCall:
    """One token request the SDK made: which method, for which scopes and tenant."""

    method: str
    scopes: tuple[str, ...]
    tenant_id: str | None


class FakeCredential:
    """A ``TokenCredential`` (and ``SupportsTokenInfo``) that hands out opaque bearer tokens.

    ``calls`` records every request (the Key Vault SDK prefers ``get_token_info`` when present);
    ``accepts(token)`` tells whether this credential issued ``token`` -- pass it to
    ``FakeKeyVaultTransport(accept_token=...)``.  With ``error`` set, every call raises it (e.g.
    ``ClientAuthenticationError`` as ``DefaultAzureCredential`` does without a managed identity).
    """

    def __init__(self, *, lifetime: int = 3600, error: Exception | None = None) -> None:
        self.lifetime = lifetime
        self.error = error
        self.calls: list[TokenCall] = []
        self._issued: set[str] = set()
        self._lock = threading.Lock()

    @property
    def call_count(self) -> int:
        return len(self.calls)

    def _issue(self, method: str, scopes: tuple[str, ...], tenant_id: str | None) -> tuple[str, int]:
        with self._lock:
            self.calls.append(TokenCall(method, scopes, tenant_id))
            if self.error is not None:
                raise self.error
            token = f"fake-kv-token-{len(self.calls)}-{uuid.uuid4().hex[:8]}"
            self._issued.add(token)
        return token, int(time.time()) + self.lifetime

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        token, expires_on = self._issue("get_token", scopes, tenant_id)
        return AccessToken(token, expires_on)

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        tenant_id = (options or {}).get("tenant_id")
        token, expires_on = self._issue("get_token_info", scopes, tenant_id)
        return AccessTokenInfo(token, expires_on)

    def accepts(self, token: str) -> bool:
        with self._lock:
            return token in self._issued

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeCredential:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- response
class FakeHttpResponse(HttpResponse):
    """A fully read ``azure.core.rest.HttpResponse`` (what the sync pipeline and SDK deserialise)."""

    def __init__(self, request: HttpRequest, status_code: int, content: bytes, headers: Mapping[str, str]) -> None:
        self._request = request
        self._status_code = status_code
        self._content = content
        self._headers = case_insensitive_dict(headers)
        self._encoding: str | None = "utf-8"
        self._is_closed = False
        self._is_stream_consumed = False

    @property
    def request(self) -> HttpRequest:
        return self._request

    @property
    def status_code(self) -> int:
        return self._status_code

    @property
    def headers(self) -> Any:
        return self._headers

    @property
    def reason(self) -> str:
        try:
            return http.HTTPStatus(self._status_code).phrase
        except ValueError:
            return ""

    @property
    def content_type(self) -> str | None:
        return self._headers.get("Content-Type")

    @property
    def is_closed(self) -> bool:
        return self._is_closed

    @property
    def is_stream_consumed(self) -> bool:
        return self._is_stream_consumed

    @property
    def encoding(self) -> str | None:
        return self._encoding

    @encoding.setter
    def encoding(self, value: str | None) -> None:
        self._encoding = value

    @property
    def url(self) -> str:
        return self._request.url

    @property
    def content(self) -> bytes:
        return self._content

    def text(self, encoding: str | None = None) -> str:
        return self._content.decode(encoding or self._encoding or "utf-8")

    def json(self) -> Any:
        return json.loads(self.text())

    def raise_for_status(self) -> None:
        if self._status_code >= 400:
            raise HttpResponseError(response=self)

    def __enter__(self) -> FakeHttpResponse:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def close(self) -> None:
        self._is_closed = True

    def read(self) -> bytes:
        self._is_stream_consumed = True
        return self._content

    def iter_raw(self, **kwargs: Any) -> Iterator[bytes]:
        self._is_stream_consumed = True
        yield self._content

    def iter_bytes(self, **kwargs: Any) -> Iterator[bytes]:
        self._is_stream_consumed = True
        yield self._content

    def __repr__(self) -> str:
        return f"<FakeHttpResponse: {self._status_code} {self.reason}>"


# --------------------------------------------------------------------------- vault state
@dataclass(frozen=True)
class RecordedRequest:
    """What the vault saw: ``path`` exactly as sent (percent-encoded), ``name`` decoded."""

    method: str
    path: str
    name: str | None
    api_version: str | None
    authorized: bool
    status: int


@dataclass
class SecretVersion:
    version: str
    value: str
    enabled: bool
    tags: dict[str, str] | None
    content_type: str | None
    created: int
    updated: int


@dataclass
class _Secret:
    name: str  # the spelling it was created with; lookups are case-insensitive
    versions: list[SecretVersion] = field(default_factory=list)
    deleted_date: int | None = None

    @property
    def latest(self) -> SecretVersion:
        return self.versions[-1]


class _Reply(Exception):
    """Internal: an error answer (status, code, message, inner code, extra headers)."""

    def __init__(
        self, status: int, code: str, message: str, inner: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.inner = status, code, message, inner
        self.headers = headers or {}


class FakeKeyVaultTransport(HttpTransport[HttpRequest, HttpResponse]):
    """The fake vault.  ``accept_token`` decides which bearer tokens are valid (default: any
    non-empty token; pass ``FakeCredential().accepts`` to accept only that credential's tokens).
    ``latency`` (seconds) is slept outside the vault's lock on every request, to widen races."""

    def __init__(
        self,
        vault_url: str = DEFAULT_VAULT_URL,
        *,
        tenant_id: str = DEFAULT_TENANT_ID,
        accept_token: Callable[[str], bool] | None = None,
        latency: float = 0.0,
        recovery_polls: int = 1,
    ) -> None:
        parts = urlsplit(vault_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"vault_url must be https://<name>.vault.azure.net, not {vault_url!r}")
        self.vault_url = f"https://{parts.netloc}"
        self.host = parts.hostname.lower()
        self.tenant_id = tenant_id
        self.accept_token = accept_token or bool
        self.latency = latency
        self.recovery_polls = recovery_polls
        self.permissions: set[str] = set(ALL_PERMISSIONS)
        self.requests: list[RecordedRequest] = []
        self.sleeps: list[float] = []
        self._secrets: dict[str, _Secret] = {}
        self._deleted: dict[str, _Secret] = {}
        self._recovering: dict[str, int] = {}
        self._lock = threading.RLock()

    # -- HttpTransport ---------------------------------------------------------------------
    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeKeyVaultTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def sleep(self, duration: float) -> None:
        """Pollers ask the transport to sleep; the fake only records the request."""
        with self._lock:
            self.sleeps.append(duration)

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        if self.latency:
            time.sleep(self.latency)
        url = urlsplit(request.url)
        if (url.hostname or "").lower() != self.host or url.scheme != "https":
            raise ServiceRequestError(f"fake Key Vault {self.vault_url} cannot reach {request.url}")
        query = parse_qs(url.query)
        api_version = query.get("api-version", [None])[0]
        segments = url.path.split("/")[1:]  # "/secrets/n/" -> ["secrets", "n", ""]
        name = unquote(segments[1]) if len(segments) > 1 and segments[0] in ("secrets", "deletedsecrets") else None
        headers = {"Content-Type": "application/json; charset=utf-8", "x-ms-request-id": str(uuid.uuid4())}
        authorized = False
        with self._lock:
            try:
                authorized = self._authenticate(request)
                if api_version not in SUPPORTED_API_VERSIONS:
                    raise _Reply(400, "BadParameter", f"The specified version ({api_version}) is not recognized.")
                status, body = self._route(request.method.upper(), segments, request)
            except _Reply as reply:
                status = reply.status
                error: dict[str, Any] = {"code": reply.code, "message": reply.message}
                if reply.inner:
                    error["innererror"] = {"code": reply.inner}
                body = {"error": error}
                headers.update(reply.headers)
            method = request.method.upper()
            self.requests.append(RecordedRequest(method, url.path, name, api_version, authorized, status))
        content = b"" if body is None else json.dumps(body).encode("utf-8")
        return FakeHttpResponse(request, status, content, headers)

    # -- test helpers ------------------------------------------------------------------------
    def sent(self, method: str | None = None, *, authorized_only: bool = True) -> list[tuple[str, str]]:
        """(method, path) of the requests sent so far, by default only those that carried a valid token."""
        with self._lock:
            return [
                (r.method, r.path)
                for r in self.requests
                if (method is None or r.method == method) and (r.authorized or not authorized_only)
            ]

    def versions(self, name: str) -> list[SecretVersion]:
        """Copies of the versions of an active secret (oldest first); [] when absent."""
        with self._lock:
            secret = self._secrets.get(name.lower())
            return [SecretVersion(**vars(v)) for v in secret.versions] if secret else []

    def secret_names(self) -> list[str]:
        with self._lock:
            return sorted(s.name for s in self._secrets.values())

    def deleted_names(self) -> list[str]:
        with self._lock:
            return sorted(s.name for s in self._deleted.values())

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- protocol ------------------------------------------------------------------------------
    def _challenge(self, extra: str = "") -> dict[str, str]:
        value = (
            f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", '
            f'resource="{KEY_VAULT_RESOURCE}"' + extra
        )
        return {"WWW-Authenticate": value}

    def _authenticate(self, request: HttpRequest) -> bool:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Reply(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.",
                         headers=self._challenge())
        if not self.accept_token(token.strip()):
            raise _Reply(401, "Unauthorized", "AKV10022: Invalid audience or token.",
                         headers=self._challenge(', error="invalid_token"'))
        return True

    def _allow(self, operation: str) -> None:
        if operation not in self.permissions:
            raise _Reply(
                403,
                "Forbidden",
                "Caller is not authorized to perform action on resource.\r\n"
                "If role assignments, deny assignments or role definitions were changed recently, please observe "
                f"propagation time.\r\nAction: '{_DATA_ACTIONS[operation]}'\r\nAssignment: (not found)\r\n",
                inner="ForbiddenByRbac",
            )

    @staticmethod
    def _now() -> int:
        return int(time.time())

    @staticmethod
    def _check_name(name: str) -> str:
        if not _VALID_NAME.match(name):
            raise _Reply(400, "BadParameter", f"The request URI contains an invalid name: {name}")
        return name

    @staticmethod
    def _body(request: HttpRequest) -> dict[str, Any]:
        raw = request.content
        if raw is None or raw == b"" or raw == "":
            raise _Reply(400, "BadParameter", "The request body is missing.")
        try:
            data = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise _Reply(400, "BadParameter", "The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise _Reply(400, "BadParameter", "The request body must be a JSON object.")
        return data

    @staticmethod
    def _not_found(name: str, deleted: bool = False) -> _Reply:
        what = "Deleted Secret" if deleted else "A secret with (name/id)"
        return _Reply(404, "SecretNotFound", f"{what} {name} was not found in this key vault.")

    def _route(self, method: str, seg: list[str], request: HttpRequest) -> tuple[int, dict[str, Any] | None]:
        if len(seg) >= 2 and seg[0] == "secrets" and seg[1] not in ("", "restore"):
            name = self._check_name(unquote(seg[1]))
            if len(seg) == 2 and method == "PUT":
                return self._set(name, self._body(request))
            if len(seg) == 2 and method == "DELETE":
                return self._delete(name)
            if len(seg) in (2, 3) and method == "GET":
                return self._get(name, unquote(seg[2]) if len(seg) == 3 else "")
            if len(seg) == 3 and method == "PATCH":
                return self._update(name, unquote(seg[2]), self._body(request))
        if len(seg) >= 2 and seg[0] == "deletedsecrets" and seg[1]:
            name = self._check_name(unquote(seg[1]))
            if len(seg) == 2 and method == "GET":
                return self._get_deleted(name)
            if len(seg) == 2 and method == "DELETE":
                return self._purge(name)
            if len(seg) == 3 and seg[2] == "recover" and method == "POST":
                return self._recover(name)
        raise _Reply(400, "BadParameter", f"fake Key Vault does not implement {method} /{'/'.join(seg)}")

    def _bundle(self, secret: _Secret, v: SecretVersion, *, with_value: bool) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "id": f"{self.vault_url}/secrets/{secret.name}/{v.version}",
            "attributes": {
                "enabled": v.enabled,
                "created": v.created,
                "updated": v.updated,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": _RECOVERABLE_DAYS,
            },
        }
        if with_value:
            bundle["value"] = v.value
        if v.tags is not None:
            bundle["tags"] = dict(v.tags)
        if v.content_type is not None:
            bundle["contentType"] = v.content_type
        return bundle

    def _deleted_bundle(self, secret: _Secret) -> dict[str, Any]:
        bundle = self._bundle(secret, secret.latest, with_value=False)
        deleted = secret.deleted_date or 0
        bundle.update(
            recoveryId=f"{self.vault_url}/deletedsecrets/{secret.name}",
            deletedDate=deleted,
            scheduledPurgeDate=deleted + _RECOVERABLE_DAYS * 86400,
        )
        return bundle

    @staticmethod
    def _attributes(body: dict[str, Any]) -> tuple[bool | None, dict[str, str] | None, str | None]:
        attributes = body.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise _Reply(400, "BadParameter", "Property 'attributes' is invalid.")
        enabled = attributes.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise _Reply(400, "BadParameter", "Property 'attributes.enabled' must be a boolean.")
        tags = body.get("tags")
        if tags is not None:
            if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
                raise _Reply(400, "BadParameter", "Property 'tags' must map strings to strings.")
            if len(tags) > MAX_TAGS:
                raise _Reply(400, "BadParameter", f"A secret can have at most {MAX_TAGS} tags.")
        content_type = body.get("contentType")
        if content_type is not None and (not isinstance(content_type, str) or len(content_type) > MAX_CONTENT_TYPE):
            raise _Reply(400, "BadParameter", f"Property 'contentType' must be at most {MAX_CONTENT_TYPE} characters.")
        return enabled, tags, content_type

    def _set(self, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self._allow("set")
        key = name.lower()
        if key in self._deleted:
            raise _Reply(
                409,
                "Conflict",
                f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; "
                "in this state, the secret can only be recovered or purged.",
                inner="ObjectIsDeletedButRecoverable",
            )
        value = body.get("value")
        if not isinstance(value, str):
            raise _Reply(400, "BadParameter", "Property 'value' is required and must be a string.")
        size = len(value.encode("utf-8"))
        if size > MAX_VALUE_BYTES:
            raise _Reply(
                400, "BadParameter",
                f"Secret value is {size} bytes; the maximum secret value size is {MAX_VALUE_BYTES} bytes (25 KB).",
            )
        enabled, tags, content_type = self._attributes(body)
        now = self._now()
        secret = self._secrets.setdefault(key, _Secret(name))
        version = SecretVersion(uuid.uuid4().hex, value, True if enabled is None else enabled, tags, content_type,
                                now, now)
        secret.versions.append(version)
        self._recovering.pop(key, None)
        return 200, self._bundle(secret, version, with_value=True)

    def _active(self, name: str) -> _Secret:
        key = name.lower()
        secret = self._secrets.get(key)
        if secret is None:
            raise self._not_found(name)
        return secret

    def _version(self, secret: _Secret, name: str, version: str) -> SecretVersion:
        if not version:
            return secret.latest
        for v in secret.versions:
            if v.version == version.lower():
                return v
        raise self._not_found(f"{name}/{version}")

    def _get(self, name: str, version: str) -> tuple[int, dict[str, Any]]:
        self._allow("get")
        key = name.lower()
        pending = self._recovering.get(key, 0)
        if pending > 0:  # recovery still running: the secret is not back yet
            self._recovering[key] = pending - 1
            raise self._not_found(name)
        secret = self._active(name)
        v = self._version(secret, name, version)
        if not v.enabled:
            raise _Reply(403, "Forbidden", "Operation get is not allowed on a disabled secret.", inner="SecretDisabled")
        return 200, self._bundle(secret, v, with_value=True)

    def _update(self, name: str, version: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self._allow("update")
        secret = self._active(name)
        v = self._version(secret, name, version)
        enabled, tags, content_type = self._attributes(body)
        if enabled is not None:
            v.enabled = enabled
        if tags is not None:
            v.tags = dict(tags)
        if content_type is not None:
            v.content_type = content_type
        v.updated = self._now()
        return 200, self._bundle(secret, v, with_value=False)

    def _delete(self, name: str) -> tuple[int, dict[str, Any]]:
        self._allow("delete")
        secret = self._active(name)
        key = name.lower()
        del self._secrets[key]
        self._recovering.pop(key, None)
        secret.deleted_date = self._now()
        self._deleted[key] = secret
        return 200, self._deleted_bundle(secret)

    def _get_deleted(self, name: str) -> tuple[int, dict[str, Any]]:
        self._allow("get")
        secret = self._deleted.get(name.lower())
        if secret is None:
            raise self._not_found(name, deleted=True)
        return 200, self._deleted_bundle(secret)

    def _recover(self, name: str) -> tuple[int, dict[str, Any]]:
        self._allow("recover")
        key = name.lower()
        secret = self._deleted.pop(key, None)
        if secret is None:
            raise self._not_found(name, deleted=True)
        secret.deleted_date = None
        self._secrets[key] = secret
        self._recovering[key] = self.recovery_polls
        return 200, self._bundle(secret, secret.latest, with_value=False)

    def _purge(self, name: str) -> tuple[int, None]:
        self._allow("purge")
        if self._deleted.pop(name.lower(), None) is None:
            raise self._not_found(name, deleted=True)
        return 204, None


__all__ = [
    "ALL_PERMISSIONS",
    "DEFAULT_TENANT_ID",
    "DEFAULT_VAULT_URL",
    "KEY_VAULT_RESOURCE",
    "MAX_VALUE_BYTES",
    "FakeCredential",
    "FakeHttpResponse",
    "FakeKeyVaultTransport",
    "RecordedRequest",
    "SecretVersion",
    "TokenCall",
]
