"""Delegated Microsoft Graph access: a user signs in once, davbridge refreshes silently.

The app normally reads mailboxes app-only (``graph_http.GraphAuth``). A user can instead be
synced with *delegated* access, where the tokens act for that user only:

1. :meth:`DelegatedAuth.start` builds the sign-in URL (msal ``initiate_auth_code_flow``:
   authorization code flow with PKCE and an OpenID Connect nonce, ``login_hint`` = the UPN) and
   keeps msal's pending flow dict -- it holds the PKCE ``code_verifier`` -- in the secrets store
   under a name derived from ``state``, for 15 minutes (one pending sign-in per user: a newer
   link supersedes an older one).
2. The identity platform redirects the browser to ``redirect_uri?code=...&state=...`` (or
   ``?error=...&error_description=...``); :meth:`DelegatedAuth.finish` takes that query, redeems
   the code (``acquire_token_by_auth_code_flow``), checks that the user who signed in is the user
   the link was for, and stores the user's msal ``SerializableTokenCache`` (refresh token
   included) in the secrets store under :func:`token_cache_secret_name`.
3. :meth:`DelegatedAuth.token_provider` gives a :class:`~sync_core.sides.graph_http.TokenProvider`
   for ``GraphClient``: ``acquire_token_silent`` from that cache, refreshing through the
   refresh token when the access token is (nearly) expired, and writing the cache back when msal
   changed it.

Sources: Microsoft identity platform "OAuth 2.0 authorization code flow" (PKCE, error answers,
"Refresh tokens aren't revoked when used"), msal-python ``ClientApplication`` docs
(``initiate_auth_code_flow`` / ``acquire_token_by_auth_code_flow`` / ``acquire_token_silent``,
token cache serialization: one ``SerializableTokenCache`` per user for web apps), AADSTS error
codes (50173 revoked grant, 700082 inactive refresh token, 65001/65004 consent), PLATFORM-NOTES
("Delegated: auth-code flow; persist a per-user msal SerializableTokenCache (in Key Vault)").

Process model: one :class:`DelegatedAuth` per process. msal keeps exactly one token cache per
application object, so it holds one msal application for the sign-in flow and one per signed-in
user (created once, reused; bounded), all sharing one HTTP session whose discovery answers are
cached, so a new user costs no extra discovery request. Each provider returned by
:meth:`~DelegatedAuth.token_provider` reads the stored cache once (another process may have
refreshed it or the user may have signed in again) and then works from memory.

Tokens, codes, the PKCE verifier and the cache never appear in log lines or exception messages;
msal's own DEBUG record of a token request (which carries ``code`` / ``code_verifier``) is
redacted by a filter on the ``msal.token_cache`` logger. UPNs are not logged either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets as token_source
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import msal
import requests

from sync_core.errors import AuthenticationFailed, DavbridgeError, SideError
from sync_core.http_sessions import new_session
from sync_core.secrets.base import SecretStore, check_secret_name
from sync_core.sides.graph_http import PUBLIC_AUTHORITY_HOST, GraphCredentials, _uses_instance_discovery

log = logging.getLogger("davbridge.delegated")

GRAPH_CALENDARS_SCOPE = "https://graph.microsoft.com/Calendars.ReadWrite"
#: msal adds these to every request itself and refuses them as input.
_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})
FLOW_TTL_SECONDS = 15 * 60
FLOW_SECRET_PREFIX = "delegated-flow-"
CACHE_SECRET_PREFIX = "delegated-token-cache-"
#: How many per-user msal applications a process keeps (least recently used ones are dropped).
MAX_CACHED_USERS = 512
#: AAD errors that mean "this user's grant is gone: sign in again" (invalid_grant covers 50173
#: revoked, 700082 inactive, 70008 expired, 50076/50079 new MFA requirement, 65001 consent).
_SIGN_IN_AGAIN = frozenset({"invalid_grant", "interaction_required", "consent_required", "login_required"})
#: Answers on the redirect that mean "consent was not given".
_CONSENT_ERRORS = frozenset({"access_denied", "consent_required"})
_CONSENT_CODES = ("AADSTS65001", "AADSTS65004", "AADSTS90094", "AADSTS90095")
_MAX_STATE = 256
_TAG_LEN = 20

# msal warns on every auth-code flow that does not use response_mode=form_post (RFC 9700 4.3.1: a
# code in the query can leak through history or Referer). davbridge's callback is a GET endpoint
# and the code is useless when it leaks: one use, bound to the PKCE verifier kept server-side and
# redeemable only with the app's client credential. Silence just that message.
warnings.filterwarnings("ignore", message=r"response_mode='form_post' is recommended", category=UserWarning)


class DelegatedAuthError(DavbridgeError):
    """A delegated sign-in could not be completed; the message says what the user or admin does next."""


def token_cache_secret_name(upn: str) -> str:
    """Secrets-store name of a user's msal token cache (Key Vault safe: ``0-9a-zA-Z-``)."""
    digest = hashlib.sha256(_user_key(upn).encode("utf-8")).hexdigest()[:32]
    return check_secret_name(CACHE_SECRET_PREFIX + digest)


def _user_tag(upn: str) -> str:
    return hashlib.sha256(("flow\0" + _user_key(upn)).encode("utf-8")).hexdigest()[:_TAG_LEN]


def flow_secret_name(state: str) -> str:
    """Secrets-store name of the pending sign-in started with ``state``.

    A state is ``<user tag>.<random>`` (the tag: 20 hex digits of a hash of the UPN), and the name
    comes from the tag alone: one pending sign-in per user, overwritten by a newer :meth:`start`.
    The Key Vault store never really deletes (it writes a disabled tombstone version), so a name
    per attempt would pile up forever; a name per user does not. A state without a valid tag maps
    to a name nothing is stored under."""
    tag, dot, _ = state.partition(".")
    if not (dot and len(tag) == _TAG_LEN and all(c in "0123456789abcdef" for c in tag)):
        tag = "x" + hashlib.sha256(state.encode("utf-8", "replace")).hexdigest()[: _TAG_LEN - 1]
    return check_secret_name(FLOW_SECRET_PREFIX + tag)


def _user_key(upn: str) -> str:
    return upn.strip().casefold()


def _first_line(text: object, limit: int = 300) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:limit] if lines else ""


# --- msal's HTTP client -------------------------------------------------------------------------
class _HttpClient:
    """The ``http_client`` handed to every msal application of one :class:`DelegatedAuth`.

    Passes the session's ``verify`` on every call (requests lets ``REQUESTS_CA_BUNDLE`` win over
    ``Session.verify`` otherwise, psf/requests#3829) and caches successful GETs -- msal's OIDC
    and instance discovery, fetched by each new application object -- for a day."""

    DISCOVERY_TTL = 24 * 3600.0

    def __init__(self, session: requests.Session, timeout: tuple[float, float]) -> None:
        self._session = session
        self._timeout = timeout
        self._lock = threading.Lock()
        self._gets: dict[str, tuple[float, requests.Response]] = {}

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self._session.verify)
        kwargs.setdefault("timeout", self._timeout)
        return self._session.post(url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        key = url + "\0" + repr(sorted((kwargs.get("params") or {}).items()))
        now = time.monotonic()
        with self._lock:
            hit = self._gets.get(key)
        if hit is not None and now - hit[0] < self.DISCOVERY_TTL:
            return hit[1]
        kwargs.setdefault("verify", self._session.verify)
        kwargs.setdefault("timeout", self._timeout)
        resp = self._session.get(url, **kwargs)
        if 200 <= resp.status_code < 300:
            resp.content  # noqa: B018 -- read the body now, so the cached object can be read again
            with self._lock:
                self._gets[key] = (now, resp)
        return resp

    def close(self) -> None:
        self._session.close()


class _RedactMsalTokenRequest(logging.Filter):
    """msal's ``token_cache`` logs each token request at DEBUG with ``code`` and ``code_verifier``
    in clear; mask them (the other secrets it masks itself)."""

    _PATTERN = re.compile(r'("(?:code|code_verifier)"\s*:\s*)"[^"]*"')

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record that does not format: leave it to the handler
            return True
        if '"code' in text:
            record.msg = self._PATTERN.sub(r'\1"********"', text)
            record.args = ()
        return True


_FILTER = _RedactMsalTokenRequest()


def _install_log_filter() -> None:
    target = logging.getLogger("msal.token_cache")
    if _FILTER not in target.filters:
        target.addFilter(_FILTER)


# --- per-user state -----------------------------------------------------------------------------
@dataclass
class _UserSlot:
    """One user's msal application and token cache in this process (guarded by ``lock``)."""

    cache: msal.SerializableTokenCache
    app: msal.ConfidentialClientApplication | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class DelegatedTokenProvider:
    """A :class:`~sync_core.sides.graph_http.TokenProvider` acting for one signed-in user.

    Thread-safe. The first :meth:`token` call reads the user's cache from the secrets store;
    later calls answer from memory (msal refreshes through the refresh token when the access
    token has less than 5 minutes left, and the changed cache is written back)."""

    def __init__(self, owner: DelegatedAuth, upn: str) -> None:
        self._owner = owner
        self.upn = upn
        self._loaded = False

    def token(self) -> str:
        return self._owner._token(self)

    def invalidate(self) -> None:
        """Forget the cached access tokens (Graph refused one): the next :meth:`token` refreshes."""
        self._owner._invalidate(self)


class DelegatedAuth:
    """Delegated (signed-in user) Graph tokens through msal's auth-code flow; one per process.

    ``redirect_uri`` is the callback registered as a *Web* redirect URI on the app registration
    (the HTTP function that calls :meth:`finish`). ``sign_in_url`` is the link users are sent to
    (the HTTP function that calls :meth:`start`), named in errors that ask for a new sign-in;
    ``{upn}`` in it is replaced by the URL-quoted UPN. The app registration needs the delegated
    permissions in ``scopes`` (default Calendars.ReadWrite) plus ``offline_access``, and user or
    admin consent for them. Exactly one of ``client_secret`` and ``certificate_pem`` (private key
    plus certificate PEM, or plus ``certificate_thumbprint``) is given.
    """

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        *,
        client_secret: str | None = None,
        certificate_pem: str | None = None,
        certificate_thumbprint: str | None = None,
        authority_host: str = PUBLIC_AUTHORITY_HOST,
        redirect_uri: str,
        secrets: SecretStore,
        verify: bool | str = True,
        scopes: Sequence[str] = (GRAPH_CALENDARS_SCOPE,),
        sign_in_url: str | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (10.0, 30.0),
        flow_ttl: float = FLOW_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = GraphCredentials(
            tenant_id=tenant_id,
            client_id=client_id,
            client_secret=client_secret,
            certificate_pem=certificate_pem,
            certificate_thumbprint=certificate_thumbprint,
            authority_host=authority_host,
        )
        split = urlsplit(redirect_uri)
        local = split.hostname in ("localhost", "127.0.0.1", "::1")
        if not split.netloc or not (split.scheme == "https" or (split.scheme == "http" and local)) or split.fragment:
            raise ValueError("redirect_uri must be an absolute https URL without a fragment (http only for localhost)")
        self.redirect_uri = redirect_uri
        self.scopes = [s for s in scopes if s.lower() not in _RESERVED_SCOPES]
        if not self.scopes:
            raise ValueError("scopes must name at least one Graph permission")
        self.sign_in_url = sign_in_url
        self.flow_ttl = flow_ttl
        self._secrets = secrets
        self._clock = clock
        http_session = session or new_session()
        http_session.verify = verify
        self._http = _HttpClient(http_session, timeout)
        self._lock = threading.Lock()
        self._flow_app: msal.ConfidentialClientApplication | None = None
        self._users: OrderedDict[str, _UserSlot] = OrderedDict()
        _install_log_filter()

    # -- links and status ------------------------------------------------------------------------
    def sign_in_link(self, upn: str) -> str | None:
        """Where ``upn`` signs in (``sign_in_url`` with ``{upn}`` filled in), or None if not configured."""
        if not self.sign_in_url:
            return None
        return self.sign_in_url.replace("{upn}", quote(upn.strip(), safe="@"))

    def is_signed_in(self, upn: str) -> bool:
        """Whether a token cache is stored for ``upn`` (it may still turn out revoked)."""
        return self._secrets.get(token_cache_secret_name(upn)) is not None

    def _sign_in_hint(self, upn: str) -> str:
        link = self.sign_in_link(upn)
        return f"at {link}" if link else "through davbridge's sign-in link (davbridge users auth-link)"

    # -- the sign-in -------------------------------------------------------------------------------
    def start(self, upn: str) -> tuple[str, str]:
        """Begin a sign-in for ``upn``: ``(authorize URL to send the browser to, state)``.

        The pending flow (with the PKCE verifier) is kept in the secrets store for
        ``flow_ttl`` seconds (15 minutes) under :func:`flow_secret_name` of the state; it replaces
        a pending sign-in of the same user, whose link then stops working."""
        upn = upn.strip()
        if not upn or any(c.isspace() for c in upn) or "@" not in upn:
            raise ValueError("upn must be a user principal name such as ada@contoso.com")
        state = f"{_user_tag(upn)}.{token_source.token_urlsafe(32)}"
        app = self._get_flow_app()
        try:
            flow = app.initiate_auth_code_flow(
                list(self.scopes), redirect_uri=self.redirect_uri, state=state, login_hint=upn
            )
        except ValueError as exc:
            raise DelegatedAuthError(f"cannot build the sign-in link: {_first_line(exc)}") from None
        pending = {"upn": upn, "expires_at": self._clock() + self.flow_ttl, "flow": flow}
        self._secrets.set(flow_secret_name(state), json.dumps(pending))
        log.info("delegated sign-in started (link valid for %d s)", int(self.flow_ttl))
        return str(flow["auth_uri"]), state

    def finish(self, query: Mapping[str, str]) -> str:
        """Complete a sign-in from the redirect's query (``code`` + ``state``, or ``error``):
        store the user's token cache and return the UPN the sign-in was for.

        Raises :class:`DelegatedAuthError` for an unknown, used or expired ``state``, an error
        answer (consent denied: the message tells the admin what to grant), a failed code
        redemption, or a sign-in by another user than the one the link was for;
        :class:`~sync_core.errors.SideError` when the token endpoint cannot be reached."""
        answer = {str(k): str(v) for k, v in query.items()}
        state = answer.get("state", "")
        if not state or len(state) > _MAX_STATE:
            raise DelegatedAuthError(
                "the sign-in answer carries no valid state: open the sign-in link again (it must come from davbridge)"
            )
        name = flow_secret_name(state)
        raw = self._secrets.get(name)
        unknown = DelegatedAuthError(
            "unknown, superseded or already used sign-in (state not found): open the newest sign-in link again"
        )
        if raw is None:
            raise unknown
        try:
            pending = json.loads(raw)
            upn = str(pending["upn"])
            expires_at = float(pending["expires_at"])
            flow = dict(pending["flow"])
            expected = str(flow["state"])
        except (ValueError, KeyError, TypeError):
            self._secrets.delete(name)
            raise DelegatedAuthError("the pending sign-in is unreadable: open the sign-in link again") from None
        if not hmac.compare_digest(expected.encode("utf-8"), state.encode("utf-8", "replace")):
            raise unknown  # an older link of the same user: the newer pending sign-in stays
        self._secrets.delete(name)  # one use, whatever happens next
        if expires_at < self._clock():
            raise DelegatedAuthError(
                f"the sign-in link expired (links are valid for {int(self.flow_ttl // 60)} minutes): "
                f"sign in again {self._sign_in_hint(upn)}"
            )
        if answer.get("error"):
            raise DelegatedAuthError(self._describe_refusal(upn, answer["error"], answer.get("error_description", "")))
        if not answer.get("code"):
            raise DelegatedAuthError("the sign-in answer has neither a code nor an error: open the sign-in link again")
        cache = msal.SerializableTokenCache()
        app = self._new_app(cache)
        try:
            result = app.acquire_token_by_auth_code_flow(flow, answer)
        except requests.RequestException as exc:
            raise SideError(f"token endpoint unreachable: {type(exc).__name__}") from None
        except ValueError:  # msal: state mismatch, malformed answer
            raise DelegatedAuthError("the sign-in answer does not match the pending sign-in: sign in again") from None
        except RuntimeError:  # msal oidc: the id token's nonce does not match
            raise DelegatedAuthError("the identity platform's answer failed the nonce check: sign in again") from None
        if not isinstance(result, dict) or "error" in result or "access_token" not in result:
            result = result if isinstance(result, dict) else {}
            error = str(result.get("error") or "unknown_error")
            detail = _first_line(self._scrub(result.get("error_description")))
            raise DelegatedAuthError(
                f"redeeming the sign-in code failed: {error}: {detail}; sign in again {self._sign_in_hint(upn)}"
            )
        claims = result.get("id_token_claims") or {}
        signed_in = str(claims.get("preferred_username") or claims.get("upn") or "")
        if _user_key(signed_in) != _user_key(upn):
            raise DelegatedAuthError(
                f"the sign-in link was for {upn}, but {signed_in or 'an unknown account'} signed in: nothing was "
                f"stored; {upn} must sign in with their own account {self._sign_in_hint(upn)}"
            )
        self._secrets.set(token_cache_secret_name(upn), cache.serialize())
        with self._lock:
            self._users.pop(_user_key(upn), None)  # providers load the new cache
        log.info("delegated sign-in completed; token cache stored")
        return upn

    def _describe_refusal(self, upn: str, error: str, description: str) -> str:
        detail = _first_line(description)
        said = f"{error}: {detail}" if detail else error
        if error in _CONSENT_ERRORS or any(code in detail for code in _CONSENT_CODES):
            wanted = ", ".join([*(s.rsplit("/", 1)[-1] for s in self.scopes), "offline_access"])
            return (
                f"sign-in for {upn} was refused because consent was not given ({said}). An administrator can "
                f"grant it for everyone: Microsoft Entra admin center > Enterprise applications > the app "
                f"{self.credentials.client_id} > Permissions > 'Grant admin consent' for the delegated "
                f"permissions {wanted}; then the user signs in again {self._sign_in_hint(upn)}"
            )
        return f"sign-in for {upn} failed ({said}); sign in again {self._sign_in_hint(upn)}"

    # -- tokens for Graph -------------------------------------------------------------------------
    def token_provider(self, upn: str) -> DelegatedTokenProvider:
        """A token provider for ``GraphClient`` acting as ``upn`` (cheap: create one per sync)."""
        if not upn.strip():
            raise ValueError("upn must not be empty")
        return DelegatedTokenProvider(self, upn.strip())

    def forget(self, upn: str) -> None:
        """Delete the user's stored token cache (revoke davbridge's delegated access). The
        refresh token itself stays valid at Entra ID until it expires or is revoked there."""
        self._secrets.delete(token_cache_secret_name(upn))
        with self._lock:
            self._users.pop(_user_key(upn), None)
        log.info("delegated token cache deleted")

    def _slot(self, upn: str) -> _UserSlot:
        key = _user_key(upn)
        with self._lock:
            slot = self._users.get(key)
            if slot is None:
                slot = self._users[key] = _UserSlot(msal.SerializableTokenCache())
                while len(self._users) > MAX_CACHED_USERS:
                    self._users.popitem(last=False)
            else:
                self._users.move_to_end(key)
            return slot

    def _load(self, provider: DelegatedTokenProvider, slot: _UserSlot) -> None:
        """Read the stored cache into the slot (caller holds ``slot.lock``)."""
        stored = self._secrets.get(token_cache_secret_name(provider.upn))
        if stored is None:
            raise AuthenticationFailed(
                f"no delegated sign-in for this user: the user must sign in {self._sign_in_hint(provider.upn)}"
            )
        try:
            slot.cache.deserialize(stored)
        except ValueError:
            raise AuthenticationFailed(
                f"the stored delegated token cache is unreadable: the user must sign in again "
                f"{self._sign_in_hint(provider.upn)}"
            ) from None
        slot.cache.has_state_changed = False
        if slot.app is None:
            slot.app = self._new_app(slot.cache)
        provider._loaded = True

    def _token(self, provider: DelegatedTokenProvider) -> str:
        slot = self._slot(provider.upn)
        with slot.lock:
            fresh = not provider._loaded
            if fresh:
                self._load(provider, slot)
            result = self._acquire(provider.upn, slot)
            if not fresh and (result is None or "access_token" not in result):
                # The user may have signed in again (in another process) since this provider
                # read the cache: read it once more before giving up.
                self._load(provider, slot)
                result = self._acquire(provider.upn, slot)
            if slot.cache.has_state_changed:
                self._secrets.set(token_cache_secret_name(provider.upn), slot.cache.serialize())
                slot.cache.has_state_changed = False
        if result is not None and "access_token" in result:
            return str(result["access_token"])
        return self._refused(provider.upn, result)

    def _acquire(self, upn: str, slot: _UserSlot) -> dict[str, Any] | None:
        app = slot.app
        assert app is not None
        accounts = app.get_accounts()
        account = next((a for a in accounts if _user_key(str(a.get("username", ""))) == _user_key(upn)), None)
        if account is None and len(accounts) == 1:
            account = accounts[0]  # one user per cache; the UPN may have been renamed
        if account is None:
            return None
        try:
            result = app.acquire_token_silent_with_error(list(self.scopes), account)
        except requests.RequestException as exc:
            raise SideError(f"token endpoint unreachable: {type(exc).__name__}") from None
        except ValueError as exc:
            raise AuthenticationFailed(f"delegated token request failed: {self._scrub(_first_line(exc))}") from None
        return result if isinstance(result, dict) else None

    def _refused(self, upn: str, result: dict[str, Any] | None) -> str:
        if not result:
            raise AuthenticationFailed(
                f"delegated sign-in expired or was revoked (no usable token in the stored cache): the user must "
                f"sign in again {self._sign_in_hint(upn)}"
            )
        error = str(result.get("error") or "unknown_error")
        detail = self._scrub(_first_line(result.get("error_description")))
        if error in _SIGN_IN_AGAIN:
            raise AuthenticationFailed(
                f"delegated sign-in expired or was revoked ({error}: {detail}): the user must sign in again "
                f"{self._sign_in_hint(upn)}"
            )
        raise AuthenticationFailed(f"delegated token refresh refused: {error}: {detail}".rstrip(": "))

    def _invalidate(self, provider: DelegatedTokenProvider) -> None:
        """Drop the access tokens and store the cache without them: Graph refused one, so no
        process should hand it out again (a reload must not bring it back)."""
        slot = self._slot(provider.upn)
        with slot.lock:
            if not provider._loaded:
                return  # nothing was handed out by this provider
            cache = slot.cache
            entries = list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN))
            for entry in entries:
                cache.remove_at(entry)
            if entries:
                self._secrets.set(token_cache_secret_name(provider.upn), cache.serialize())
            cache.has_state_changed = False

    # -- msal applications --------------------------------------------------------------------------
    def _new_app(self, cache: msal.SerializableTokenCache) -> msal.ConfidentialClientApplication:
        creds = self.credentials
        try:
            return msal.ConfidentialClientApplication(
                creds.client_id,
                authority=creds.authority,
                client_credential=creds.msal_credential(),
                http_client=self._http,
                token_cache=cache,
                instance_discovery=None if _uses_instance_discovery(creds.authority_host) else False,
            )
        except requests.RequestException as exc:
            raise SideError(f"token authority unreachable: {type(exc).__name__}") from None
        except ValueError as exc:
            raise AuthenticationFailed(f"cannot use the app registration: {self._scrub(str(exc))}") from None

    def _get_flow_app(self) -> msal.ConfidentialClientApplication:
        with self._lock:
            app = self._flow_app
        if app is None:
            app = self._new_app(msal.SerializableTokenCache())  # discovery: outside the lock
            with self._lock:
                if self._flow_app is None:
                    self._flow_app = app
                app = self._flow_app
        return app

    def _scrub(self, text: object) -> str:
        out = str(text or "")
        for secret in (self.credentials.client_secret, self.credentials.private_key_passphrase):
            if secret:
                out = out.replace(secret, "***")
        return out
