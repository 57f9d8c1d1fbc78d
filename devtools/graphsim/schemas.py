"""Small hand-written schemas for payloads the CSDL excerpt does not cover.

* Graph error bodies (errors page): ``{"error": {"code", "message", "innerError": {"date",
  "request-id", "client-request-id"}}}``; ``code`` non-empty, ``date`` ``YYYY-MM-DDTHH:MM:SS``.
* ``user`` (user-get default property set; the user type is not in the calendar excerpt).
* Microsoft identity platform token responses and AADSTS error responses.

Each function returns a list of human-readable issues; empty means valid.
"""

from __future__ import annotations

import re
from typing import Any

_ERROR_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

_USER_STRINGS = (
    "displayName", "givenName", "jobTitle", "mail", "mobilePhone", "officeLocation",
    "preferredLanguage", "surname",
)  # fmt: skip


def _exact_keys(obj: dict[str, Any], required: set[str], optional: set[str], where: str) -> list[str]:
    issues = [f"{where}: missing '{k}'" for k in sorted(required - set(obj))]
    issues += [f"{where}: unexpected '{k}'" for k in sorted(set(obj) - required - optional)]
    return issues


def validate_error_body(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["error body: not a JSON object"]
    issues = _exact_keys(payload, {"error"}, set(), "$")
    err = payload.get("error")
    if not isinstance(err, dict):
        return [*issues, "$.error: not an object"]
    issues += _exact_keys(err, {"code", "message", "innerError"}, {"details"}, "$.error")
    if not isinstance(err.get("code"), str) or not err.get("code"):
        issues.append("$.error.code: must be a non-empty string")
    if not isinstance(err.get("message"), str):
        issues.append("$.error.message: must be a string")
    inner = err.get("innerError")
    if not isinstance(inner, dict):
        return [*issues, "$.error.innerError: not an object"]
    issues += _exact_keys(inner, {"date", "request-id", "client-request-id"}, set(), "$.error.innerError")
    if not isinstance(inner.get("date"), str) or not _ERROR_DATE.match(inner.get("date", "")):
        issues.append("$.error.innerError.date: must be YYYY-MM-DDTHH:MM:SS")
    for key in ("request-id", "client-request-id"):
        if not isinstance(inner.get(key), str) or not inner.get(key):
            issues.append(f"$.error.innerError.{key}: must be a non-empty string")
    return issues


def validate_user(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["user: not a JSON object"]
    issues = _exact_keys(
        payload,
        {"id", "userPrincipalName", "displayName", "businessPhones"},
        {"@odata.context", *_USER_STRINGS},
        "$",
    )
    if not isinstance(payload.get("id"), str) or not _GUID.match(payload.get("id", "")):
        issues.append("$.id: must be a lower-case GUID string")
    if not isinstance(payload.get("userPrincipalName"), str) or "@" not in payload.get("userPrincipalName", ""):
        issues.append("$.userPrincipalName: must be a UPN")
    phones = payload.get("businessPhones")
    if not isinstance(phones, list) or not all(isinstance(p, str) for p in phones):
        issues.append("$.businessPhones: must be an array of strings")
    for key in _USER_STRINGS:
        if key in payload and payload[key] is not None and not isinstance(payload[key], str):
            issues.append(f"$.{key}: must be a string or null")
    return issues


def validate_token_response(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["token response: not a JSON object"]
    issues = _exact_keys(payload, {"token_type", "expires_in", "ext_expires_in", "access_token"}, set(), "$")
    if payload.get("token_type") != "Bearer":
        issues.append("$.token_type: must be 'Bearer'")
    for key in ("expires_in", "ext_expires_in"):
        if not isinstance(payload.get(key), int) or payload.get(key, 0) <= 0:
            issues.append(f"$.{key}: must be a positive integer")
    return issues


def validate_aad_error(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["AAD error: not a JSON object"]
    issues = _exact_keys(
        payload,
        {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id"},
        {"error_uri"},
        "$",
    )
    codes = payload.get("error_codes")
    if not isinstance(codes, list) or not codes or not all(isinstance(c, int) for c in codes):
        issues.append("$.error_codes: must be a non-empty array of integers")
    elif not str(payload.get("error_description", "")).startswith(f"AADSTS{codes[0]}:"):
        issues.append("$.error_description: must start with AADSTS<code>:")
    return issues
