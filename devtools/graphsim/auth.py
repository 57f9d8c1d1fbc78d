"""Microsoft identity platform stand-in: OIDC discovery and the client-credentials token endpoint.

What msal (1.39, ``msal/authority.py`` and ``application.py``) needs from an authority created as
``ConfidentialClientApplication(..., authority=f"{host}/{tenant}", instance_discovery=False)``:

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (tenant discovery; with
  ``instance_discovery=False`` no ``/common/discovery/instance`` call is made). msal reads
  ``authorization_endpoint``, ``token_endpoint`` (it takes the tenant from its path),
  ``device_authorization_endpoint`` and ``issuer``. A 4xx answer makes msal raise ValueError.
* ``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials``, ``client_id``,
  ``scope`` and either ``client_secret`` or ``client_assertion_type=urn:ietf:params:oauth:
  client-assertion-type:jwt-bearer`` + ``client_assertion``. msal signs the assertion with the
  certificate's private key: RS256 with header ``x5t`` (SHA-1 thumbprint) when given
  ``{"private_key", "thumbprint"}``, PS256 with ``x5t#S256`` (and ``x5c``) when given
  ``{"private_key", "public_certificate"}``; claims ``aud`` = token endpoint, ``iss`` = ``sub`` =
  client id, ``exp``, ``iat``, ``jti``.
* Success: ``{"token_type": "Bearer", "expires_in", "ext_expires_in", "access_token"}``.
  Failures use the AAD error shape ``{"error", "error_description": "AADSTSnnn: ...",
  "error_codes", "timestamp", "trace_id", "correlation_id", "error_uri"}``; a wrong secret is
  ``401 invalid_client`` AADSTS7000215, a bad assertion signature ``401 invalid_client``
  AADSTS700027, an unknown app ``400 unauthorized_client`` AADSTS700016, an unknown tenant
  ``400 invalid_request`` AADSTS90002, a scope that is not ``{resource}/.default``
  ``400 invalid_scope`` AADSTS1002012.

Access tokens are opaque random strings (never logged); Graph calls check them against this
registry. Each token carries the application permissions (app roles, the JWT ``roles`` claim)
its app registration held when it was issued: ``Calendars.ReadWrite`` unless the app was
registered with other ``roles``. A client-credentials token is issued even for an app with no
application permission at all (Entra ID does that too: the token then has no ``roles`` claim);
Graph refuses its calendar requests (see ``routes.py``).

Delegated access (authorization code flow with PKCE, v2-oauth2-auth-code-flow; what msal's
``initiate_auth_code_flow`` / ``acquire_token_by_auth_code_flow`` / ``acquire_token_silent`` send):

* ``GET /{tenant}/oauth2/v2.0/authorize?client_id&response_type=code&redirect_uri&scope&state
  &code_challenge&code_challenge_method&nonce&login_hint&client_info=1``. No browser is involved:
  the stand-in signs in the user named by ``login_hint`` and answers ``302`` to
  ``redirect_uri?code=...&state=...&session_state=...`` (plus ``client_info`` when asked).
  Errors the app may be told about go to the redirect URI as ``error`` / ``error_description``
  (``AADSTSnnn: ...``) / ``state``: ``access_denied`` AADSTS65004 (``deny_consent``),
  ``unsupported_response_type``, ``invalid_request`` (missing scope; unknown user, AADSTS50034),
  ``login_required`` AADSTS50058 (no ``login_hint``), ``invalid_resource`` AADSTS500011.
  Errors about the client itself (unknown tenant or app, a redirect URI that is not registered:
  AADSTS50011) are never redirected (that would be an open redirector): ``400`` with the AAD error
  body, as the real service shows an error page.
* Codes live 10 minutes and redeem once (AADSTS54005 on replay, AADSTS70008 when expired).
  ``POST /token`` ``grant_type=authorization_code`` checks the client credential (secret or
  assertion, as above), the code, ``redirect_uri`` (AADSTS50011) and the PKCE ``code_verifier``
  (S256 or plain; AADSTS501481); ``grant_type=refresh_token`` checks the client and the refresh
  token: revoked with :meth:`AuthService.revoke_refresh_tokens` -> ``invalid_grant`` AADSTS50173,
  expired with :meth:`AuthService.expire_refresh_tokens` -> ``invalid_grant`` AADSTS700082, issued
  to another client -> AADSTS70000, unknown -> AADSTS9002313. A refresh returns a new refresh token;
  the old one stays valid ("Refresh tokens aren't revoked when used to acquire new access tokens").
* Delegated answers: ``token_type``, ``scope`` (the requested scopes, as msal keys its cache by
  them), ``expires_in``, ``ext_expires_in``, ``access_token`` (opaque; it carries the user's object
  id and the granted Graph permissions, the ``scp`` claim), ``refresh_token`` (with
  ``offline_access``), ``id_token`` (with ``openid``: an RS256 JWT signed with the key published at
  ``/discovery/v2.0/keys``; claims ``aud``, ``iss``, ``iat``, ``nbf``, ``exp``, ``name``, ``oid``,
  ``preferred_username``, ``sub``, ``tid``, ``ver``, and ``nonce`` from the authorize request),
  ``client_info`` (``{"uid": oid, "utid": tid}``, base64url) when ``client_info=1`` was sent.
* Scopes: ``openid``, ``profile``, ``email``, ``offline_access`` and Microsoft Graph permissions
  (``https://graph.microsoft.com/Calendars.ReadWrite``, the bare ``Calendars.ReadWrite`` or the
  app id URI form); ``{graph}/.default`` grants ``Calendars.ReadWrite`` and ``User.Read``. Other
  resources: ``invalid_resource`` AADSTS500011.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devtools.graphsim.odata import GraphError

GRAPH_RESOURCES = ("https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = 300  # seconds; AAD tolerates a few minutes
#: The application permission a newly registered app holds unless told otherwise.
DEFAULT_ROLES: tuple[str, ...] = ("Calendars.ReadWrite",)
#: OpenID Connect scopes: they ask for the id_token / refresh token, not for Graph permissions.
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
#: What ``{graph}/.default`` grants a delegated token here (the app's configured permissions).
DEFAULT_DELEGATED = ("Calendars.ReadWrite", "User.Read")
CODE_LIFETIME = 600  # "Authorization codes are short lived. Typically, they expire after about 10 minutes."
REFRESH_TOKEN_LIFETIME = 90 * 86400  # inactivity limit of a refresh token (90 days)
ID_TOKEN_LIFETIME = 3600


@dataclass
class AppRegistration:
    tenant_id: str
    client_id: str
    client_secret: str | None
    certificate: x509.Certificate | None
    roles: frozenset[str] = frozenset(DEFAULT_ROLES)
    #: redirect URIs registered for the auth-code flow (compared exactly, as Entra ID does)
    redirect_uris: tuple[str, ...] = ()

    @property
    def x5t(self) -> str | None:
        return _b64url(self.certificate.fingerprint(hashes.SHA1())) if self.certificate else None

    @property
    def x5t_s256(self) -> str | None:
        return _b64url(self.certificate.fingerprint(hashes.SHA256())) if self.certificate else None


@dataclass(frozen=True)
class AccessToken:
    tenant_id: str
    client_id: str
    expires_at: float
    #: application permissions (``roles`` claim) granted to the app when the token was issued
    roles: frozenset[str] = field(default=frozenset(DEFAULT_ROLES))
    #: delegated tokens only: the signed-in user's object id (``oid``) ...
    user_id: str | None = None
    #: ... and the Graph permissions granted to the app on the user's behalf (``scp``)
    scopes: frozenset[str] = frozenset()

    @property
    def delegated(self) -> bool:
        return self.user_id is not None


class DirectoryUser(Protocol):
    """A user the stand-in can sign in (``store.User``)."""

    @property
    def id(self) -> str: ...
    @property
    def upn(self) -> str: ...
    @property
    def display_name(self) -> str: ...


@dataclass
class _AuthCode:
    tenant_id: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]  # as requested on /authorize
    code_challenge: str | None
    code_challenge_method: str
    nonce: str | None
    user_id: str
    expires_at: float
    redeemed: bool = False


@dataclass
class _RefreshGrant:
    tenant_id: str
    client_id: str
    user_id: str
    issued_at: float
    expired: bool = False  # expire_refresh_tokens(): AADSTS700082


class AadError(Exception):
    def __init__(self, status: int, error: str, code: int, description: str):
        super().__init__(f"{status} {error} AADSTS{code}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description


class AuthService:
    """App registrations, issued access tokens, and the identity endpoints' logic."""

    def __init__(
        self,
        token_lifetime: int = 3599,
        find_user: Callable[[str], DirectoryUser | None] | None = None,
    ) -> None:
        self.token_lifetime = token_lifetime
        self.refresh_token_lifetime = REFRESH_TOKEN_LIFETIME
        #: the directory: a user by object id or UPN (``store.find_user``); None: nobody can sign in
        self.find_user = find_user
        self._lock = threading.Lock()
        self._apps: dict[tuple[str, str], AppRegistration] = {}
        self._tenants: set[str] = set()
        self._tokens: dict[str, AccessToken] = {}
        self._codes: dict[str, _AuthCode] = {}
        self._refresh: dict[str, _RefreshGrant] = {}
        self._denied_consent: set[str] = set()  # user ids
        self._consents: dict[tuple[str, str, str], frozenset[str]] = {}  # (tenant, client, user id) -> scp
        self._tokens_valid_from: dict[str, float] = {}  # user id -> revocation time
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = _b64url(hashlib.sha256(str(id(self)).encode() + secrets.token_bytes(8)).digest()[:15])

    def register_app(
        self,
        tenant_id: str,
        client_id: str,
        client_secret: str | None = None,
        certificate_pem: str | bytes | None = None,
        roles: Iterable[str] = DEFAULT_ROLES,
        redirect_uris: Iterable[str] = (),
    ) -> AppRegistration:
        """Register a confidential client with a secret, a certificate (public PEM), or both.

        ``roles`` are the application permissions granted with admin consent (``()``: none).
        ``redirect_uris`` are the web redirect URIs the auth-code flow may answer to.
        Registering the same (tenant, client) again replaces the registration; tokens issued
        before keep the roles they were issued with, as JWTs do."""
        if isinstance(roles, str):
            raise TypeError("roles must be a collection of permission names, not one string")
        if isinstance(redirect_uris, str):
            raise TypeError("redirect_uris must be a collection of URIs, not one string")
        if not client_secret and not certificate_pem:
            raise ValueError("register_app needs client_secret or certificate_pem")
        cert = None
        if certificate_pem:
            raw = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            cert = x509.load_pem_x509_certificate(raw)
            if not isinstance(cert.public_key(), rsa.RSAPublicKey):
                raise ValueError("only RSA certificates are supported (msal signs RS256/PS256)")
        app = AppRegistration(tenant_id, client_id, client_secret, cert, frozenset(roles), tuple(redirect_uris))
        with self._lock:
            self._apps[(tenant_id.lower(), client_id.lower())] = app
            self._tenants.add(tenant_id.lower())
        return app

    def knows_tenant(self, tenant: str) -> bool:
        with self._lock:
            return tenant.lower() in self._tenants

    # -- discovery ------------------------------------------------------------------------
    def openid_configuration(self, tenant: str, authority_host: str) -> tuple[int, dict[str, Any]]:
        """``/{tenant}/v2.0/.well-known/openid-configuration`` (the v2.0 document's members)."""
        if not self.knows_tenant(tenant):
            err = AadError(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud.",
            )
            return err.status, self.error_body(err, authority_host)
        base = f"{authority_host}/{tenant}"
        return 200, {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{authority_host}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "ver"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        }

    # -- token endpoint -----------------------------------------------------------------------
    def token(self, tenant: str, form: dict[str, str], authority_host: str) -> tuple[int, dict[str, Any]]:
        """Answer ``POST /{tenant}/oauth2/v2.0/token``: client credentials, authorization code,
        refresh token."""
        try:
            if form.get("grant_type") in ("authorization_code", "refresh_token"):
                return 200, self._delegated_grant(tenant, form, authority_host)
            token, lifetime = self._issue(tenant, form, authority_host)
        except AadError as err:
            return err.status, self.error_body(err, authority_host)
        return 200, {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    def _issue(self, tenant: str, form: dict[str, str], authority_host: str) -> tuple[str, int]:
        if not self.knows_tenant(tenant):
            raise AadError(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        grant = form.get("grant_type")
        if grant != "client_credentials":
            raise AadError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant}'.",
            )
        app = self._find_app(tenant, form.get("client_id", ""))
        self._check_scope(form.get("scope", ""))
        self._authenticate(app, tenant, form, authority_host)
        token = "gsim." + secrets.token_urlsafe(48)
        lifetime = self.token_lifetime
        with self._lock:
            self._tokens[token] = AccessToken(app.tenant_id, app.client_id, time.time() + lifetime, app.roles)
        return token, lifetime

    def _find_app(self, tenant: str, client_id: str) -> AppRegistration:
        with self._lock:
            app = self._apps.get((tenant.lower(), client_id.lower()))
        if app is None:
            raise AadError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
            )
        return app

    def _authenticate(self, app: AppRegistration, tenant: str, form: Mapping[str, str], authority_host: str) -> None:
        """The client credential of a confidential client: a secret or a signed assertion."""
        if form.get("client_assertion") or form.get("client_assertion_type"):
            if form.get("client_assertion_type") != JWT_BEARER:
                raise AadError(
                    400,
                    "invalid_request",
                    50027,
                    "client_assertion_type must be the jwt-bearer assertion type.",
                )
            token_endpoint = f"{authority_host}/{tenant}/oauth2/v2.0/token"
            self._verify_assertion(app, form.get("client_assertion", ""), token_endpoint, f"{authority_host}/{tenant}")
        elif "client_secret" in form:
            if not app.client_secret or not hmac.compare_digest(
                form["client_secret"].encode(), app.client_secret.encode()
            ):
                raise AadError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                    f"secret value, not the client secret ID, for a secret added to app '{app.client_id}'.",
                )
        else:
            raise AadError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )

    @staticmethod
    def _check_scope(scope: str) -> None:
        scopes = scope.split()
        if not scopes:
            raise AadError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'scope'.",
            )
        for s in scopes:
            if not s.endswith("/.default"):
                raise AadError(
                    400,
                    "invalid_scope",
                    1002012,
                    f"The provided value for scope {s} is not valid. Client credential flows must have a scope "
                    "value with /.default suffixed to the resource identifier (application ID URI).",
                )
            resource = s[: -len("/.default")].rstrip("/")
            if resource.lower() not in GRAPH_RESOURCES:
                raise AadError(
                    400,
                    "invalid_resource",
                    500011,
                    f"The resource principal named {resource} was not found in the tenant. graphsim only "
                    "issues tokens for Microsoft Graph.",
                )

    def _verify_assertion(self, app: AppRegistration, assertion: str, token_endpoint: str, authority: str) -> None:
        """RFC 7523 client authentication: check the JWT's certificate, signature and claims."""
        if app.certificate is None:
            raise AadError(
                401,
                "invalid_client",
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found.]",
            )
        try:
            h64, p64, s64 = assertion.split(".")
            header = json.loads(_b64url_decode(h64))
            claims = json.loads(_b64url_decode(p64))
            signature = _b64url_decode(s64)
        except (ValueError, binascii.Error):
            raise AadError(400, "invalid_request", 50027, "JWT token is invalid or malformed.") from None
        # msal writes the thumbprints as padded base64url; RFC 7515 says unpadded: accept both.
        s256, sha1 = header.get("x5t#S256"), header.get("x5t")
        thumb_ok = (isinstance(s256, str) and s256.rstrip("=") == app.x5t_s256) or (
            isinstance(sha1, str) and sha1.rstrip("=") == app.x5t
        )
        if not thumb_ok:
            raise AadError(
                401,
                "invalid_client",
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found., "
                f"Thumbprint of key used by client: '{header.get('x5t#S256') or header.get('x5t')}']",
            )
        public_key = app.certificate.public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        signed = f"{h64}.{p64}".encode("ascii")
        alg = header.get("alg")
        pad: padding.AsymmetricPadding
        if alg == "RS256":
            pad = padding.PKCS1v15()
        elif alg == "PS256":
            pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
        else:
            raise AadError(401, "invalid_client", 700027, f"Client assertion uses an unsupported algorithm '{alg}'.")
        try:
            public_key.verify(signature, signed, pad, hashes.SHA256())
        except InvalidSignature:
            raise AadError(
                401,
                "invalid_client",
                700027,
                "Client assertion contains an invalid signature. [Reason - The "
                "provided signature value did not match the expected signature value.]",
            ) from None
        now = time.time()
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        allowed = {token_endpoint.lower(), f"{authority}/v2.0".lower()}
        if not any(isinstance(a, str) and a.lower() in allowed for a in auds):
            raise AadError(
                400,
                "invalid_client",
                700212,
                f"The client assertion audience '{aud}' is not the token endpoint.",
            )
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise AadError(
                400,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            )
        exp = claims.get("exp")
        nbf = claims.get("nbf")
        if (
            not isinstance(exp, int | float)
            or exp < now - CLOCK_SKEW
            or (isinstance(nbf, int | float) and nbf > now + CLOCK_SKEW)
        ):
            raise AadError(400, "invalid_client", 700024, "Client assertion is not within its valid time range.")

    # -- delegated access: the authorization code flow ---------------------------------------------
    def deny_consent(self, user_id: str, denied: bool = True) -> None:
        """The user declines the consent prompt (``access_denied`` AADSTS65004) until allowed again."""
        with self._lock:
            if denied:
                self._denied_consent.add(user_id)
            else:
                self._denied_consent.discard(user_id)

    def revoke_refresh_tokens(self, user_id: str) -> int:
        """Like Graph's ``revokeSignInSessions``: every refresh token issued to the user so far
        answers ``invalid_grant`` AADSTS50173 (access tokens stay valid until they expire, as
        JWTs do). Returns how many refresh tokens that concerns."""
        now = time.time()
        with self._lock:
            self._tokens_valid_from[user_id] = now
            return sum(1 for g in self._refresh.values() if g.user_id == user_id)

    def expire_refresh_tokens(self, user_id: str) -> int:
        """Every refresh token issued to the user so far expired through inactivity (AADSTS700082)."""
        with self._lock:
            grants = [g for g in self._refresh.values() if g.user_id == user_id]
            for grant in grants:
                grant.expired = True
            return len(grants)

    def expire_access_tokens(self, user_id: str | None = None) -> int:
        """Access tokens issued so far (to ``user_id`` only, or every token) are expired now:
        Graph answers 401 "Lifetime validation failed, the token is expired."."""
        past = time.time() - 1
        with self._lock:
            hits = [t for t, tok in self._tokens.items() if user_id is None or tok.user_id == user_id]
            for t in hits:
                tok = self._tokens[t]
                self._tokens[t] = AccessToken(tok.tenant_id, tok.client_id, past, tok.roles, tok.user_id, tok.scopes)
            return len(hits)

    def jwks(self) -> dict[str, Any]:
        """``/discovery/v2.0/keys``: the key that signs id_tokens."""
        numbers = self._signing_key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": self._kid,
                    "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                    "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
                }
            ]
        }

    def authorize(
        self, tenant: str, query: Mapping[str, str], authority_host: str
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        """``GET /{tenant}/oauth2/v2.0/authorize``: ``(status, body, headers)``; 302 to the redirect
        URI with a code (or an error), or 400 with the AAD error body when the redirect URI cannot
        be trusted."""
        if not self.knows_tenant(tenant):
            err = AadError(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
            return err.status, self.error_body(err, authority_host), {}
        client_id = query.get("client_id", "")
        try:
            if not client_id:
                raise AadError(
                    400,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'client_id'.",
                )
            app = self._find_app(tenant, client_id)
        except AadError as exc:
            return exc.status, self.error_body(exc, authority_host), {}
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in app.redirect_uris:
            err = AadError(
                400,
                "invalid_request",
                50011,
                f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
                f"configured for the application '{app.client_id}'. Make sure the redirect URI sent in the request "
                "matches one added to your application in the Azure portal.",
            )
            return err.status, self.error_body(err, authority_host), {}
        state = query.get("state")
        try:
            user, scopes, challenge, method = self._check_authorize(tenant, query)
        except AadError as refused:
            params = {
                "error": refused.error,
                "error_description": f"AADSTS{refused.code}: {refused.description}",
                "error_uri": f"{authority_host}/error?code={refused.code}",
            }
            if state is not None:
                params["state"] = state
            return 302, None, {"Location": _with_query(redirect_uri, params), "Cache-Control": "no-store"}
        code = "gsimcode." + secrets.token_urlsafe(48)
        now = time.time()
        with self._lock:
            for stale in [c for c, rec in self._codes.items() if rec.expires_at < now - CODE_LIFETIME]:
                del self._codes[stale]
            self._codes[code] = _AuthCode(
                app.tenant_id,
                app.client_id,
                redirect_uri,
                scopes,
                challenge,
                method,
                query.get("nonce"),
                user.id,
                now + CODE_LIFETIME,
            )
            key = (app.tenant_id.lower(), app.client_id.lower(), user.id)
            self._consents[key] = self._consents.get(key, frozenset()) | self._graph_permissions(scopes)
        params = {"code": code}
        if state is not None:
            params["state"] = state
        params["session_state"] = str(uuid.uuid4())
        if query.get("client_info") == "1":
            params["client_info"] = _client_info(user.id, tenant_guid(app.tenant_id))
        return 302, None, {"Location": _with_query(redirect_uri, params), "Cache-Control": "no-store"}

    def _check_authorize(
        self, tenant: str, query: Mapping[str, str]
    ) -> tuple[DirectoryUser, tuple[str, ...], str | None, str]:
        """The checks whose failures are redirected to the app: (user, scopes, challenge, method)."""
        response_type = query.get("response_type", "")
        if response_type != "code":
            raise AadError(
                400,
                "unsupported_response_type",
                700054,
                f"response_type '{response_type}' is not enabled for the application (graphsim implements the "
                "authorization code flow only).",
            )
        if query.get("response_mode", "query") != "query":
            raise AadError(
                400, "invalid_request", 9002313, "graphsim answers with response_mode=query only (no form_post)."
            )
        scopes = tuple(query.get("scope", "").split())
        if not scopes:
            raise AadError(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'."
            )
        self._graph_permissions(scopes)
        challenge = query.get("code_challenge") or None
        method = query.get("code_challenge_method") or "plain"
        if challenge is not None:
            if method not in ("S256", "plain"):
                raise AadError(400, "invalid_request", 9002313, "Invalid request. Request is malformed or invalid.")
            if not 43 <= len(challenge) <= 128:
                raise AadError(400, "invalid_request", 501491, "Invalid size of Code_Challenge parameter.")
        hint = query.get("login_hint", "")
        if not hint:
            raise AadError(
                400,
                "login_required",
                50058,
                "A silent sign-in request was sent but no user is signed in. (graphsim signs in the user named by "
                "login_hint.)",
            )
        user = self.find_user(hint) if self.find_user is not None else None
        if user is None:
            raise AadError(
                400,
                "invalid_request",
                50034,
                f"The user account {hint} does not exist in the '{tenant}' directory. To sign into this "
                "application, the account must be added to the directory.",
            )
        with self._lock:
            denied = user.id in self._denied_consent
        if denied:
            raise AadError(400, "access_denied", 65004, "User declined to consent to access the app.")
        return user, scopes, challenge, method

    @staticmethod
    def _graph_permissions(scopes: Iterable[str]) -> frozenset[str]:
        """The Graph permissions (``scp``) named by a delegated scope list; OIDC scopes name none."""
        perms: set[str] = set()
        for scope in scopes:
            if scope.lower() in OIDC_SCOPES:
                continue
            resource, _, name = scope.rpartition("/")
            if resource and resource.rstrip("/").lower() not in GRAPH_RESOURCES:
                raise AadError(
                    400,
                    "invalid_resource",
                    500011,
                    f"The resource principal named {resource} was not found in the tenant. graphsim only issues "
                    "tokens for Microsoft Graph.",
                )
            if name == ".default":
                perms.update(DEFAULT_DELEGATED)
            elif name and all(c.isalnum() or c == "." for c in name):
                perms.add(_KNOWN_PERMISSIONS.get(name.lower(), name))
            else:
                raise AadError(
                    400,
                    "invalid_scope",
                    70011,
                    f"The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid.",
                )
        return frozenset(perms)

    def _delegated_grant(self, tenant: str, form: Mapping[str, str], authority_host: str) -> dict[str, Any]:
        if not self.knows_tenant(tenant):
            raise AadError(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        app = self._find_app(tenant, form.get("client_id", ""))
        self._authenticate(app, tenant, form, authority_host)
        nonce: str | None = None
        if form.get("grant_type") == "authorization_code":
            user, scopes, nonce = self._redeem_code(app, form)
        else:
            user, scopes = self._redeem_refresh(app, form)
        return self._issue_delegated(app, user, scopes, nonce, form, authority_host)

    def _user_or_error(self, user_id: str) -> DirectoryUser:
        user = self.find_user(user_id) if self.find_user is not None else None
        if user is None:
            raise AadError(400, "invalid_grant", 50034, "The user account does not exist in the directory.")
        return user

    def _check_consent(self, app: AppRegistration, user_id: str, scopes: Iterable[str]) -> None:
        with self._lock:
            consented = self._consents.get((app.tenant_id.lower(), app.client_id.lower(), user_id), frozenset())
        if not self._graph_permissions(scopes) <= consented:
            raise AadError(
                400,
                "invalid_grant",
                65001,
                f"The user or administrator has not consented to use the application with ID '{app.client_id}'. "
                "Send an interactive authorization request for this user and resource.",
            )

    def _redeem_code(
        self, app: AppRegistration, form: Mapping[str, str]
    ) -> tuple[DirectoryUser, tuple[str, ...], str | None]:
        code = form.get("code", "")
        if not code:
            raise AadError(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'code'."
            )
        with self._lock:
            rec = self._codes.get(code)
            if rec is None:
                raise AadError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
            if rec.redeemed:
                raise AadError(
                    400,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
                    "existing refresh token.",
                )
            if rec.expires_at < time.time():
                raise AadError(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity. Send a new "
                    "interactive authorization request for this user and resource.",
                )
            if (rec.tenant_id.lower(), rec.client_id.lower()) != (app.tenant_id.lower(), app.client_id.lower()):
                raise AadError(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
            if form.get("redirect_uri", "") != rec.redirect_uri:
                raise AadError(
                    400,
                    "invalid_grant",
                    50011,
                    f"The redirect URI '{form.get('redirect_uri', '')}' specified in the request does not match the "
                    "redirect URI used to request the authorization code.",
                )
            if rec.code_challenge is not None:
                verifier = form.get("code_verifier", "")
                computed = (
                    _b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
                    if rec.code_challenge_method == "S256"
                    else verifier
                )
                if not verifier or not hmac.compare_digest(computed.encode(), rec.code_challenge.encode()):
                    raise AadError(
                        400,
                        "invalid_grant",
                        501481,
                        "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                    )
            rec.redeemed = True
        scopes = tuple(form.get("scope", "").split()) or rec.scopes
        if not self._graph_permissions(scopes) <= self._graph_permissions(rec.scopes):
            raise AadError(
                400,
                "invalid_grant",
                65001,
                f"The user or administrator has not consented to use the application with ID '{app.client_id}'. "
                "Send an interactive authorization request for this user and resource.",
            )
        return self._user_or_error(rec.user_id), scopes, rec.nonce

    def _redeem_refresh(self, app: AppRegistration, form: Mapping[str, str]) -> tuple[DirectoryUser, tuple[str, ...]]:
        token = form.get("refresh_token", "")
        if not token:
            raise AadError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'refresh_token'.",
            )
        with self._lock:
            grant = self._refresh.get(token)
            valid_from = self._tokens_valid_from.get(grant.user_id) if grant is not None else None
        if grant is None:
            raise AadError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        if (grant.tenant_id.lower(), grant.client_id.lower()) != (app.tenant_id.lower(), app.client_id.lower()):
            raise AadError(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
        if valid_from is not None and grant.issued_at <= valid_from:
            raise AadError(
                400,
                "invalid_grant",
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might "
                f"have changed or reset their password. The grant was issued on '{_iso(grant.issued_at)}' and the "
                f"TokensValidFrom date (before which tokens are not valid) for this user is '{_iso(valid_from)}'.",
            )
        inactive = time.time() - grant.issued_at
        if grant.expired or inactive > self.refresh_token_lifetime:
            raise AadError(
                400,
                "invalid_grant",
                700082,
                f"The refresh token has expired due to inactivity. The token was issued on {_iso(grant.issued_at)} "
                f"and was inactive for {int(self.refresh_token_lifetime // 86400)}.00:00:00.",
            )
        user = self._user_or_error(grant.user_id)
        scopes = tuple(form.get("scope", "").split())
        if not scopes:
            raise AadError(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'."
            )
        self._check_consent(app, user.id, scopes)
        return user, scopes

    def _issue_delegated(
        self,
        app: AppRegistration,
        user: DirectoryUser,
        scopes: tuple[str, ...],
        nonce: str | None,
        form: Mapping[str, str],
        authority_host: str,
    ) -> dict[str, Any]:
        perms = self._graph_permissions(scopes)
        now = time.time()
        lifetime = self.token_lifetime
        access = "gsim." + secrets.token_urlsafe(48)
        tid = tenant_guid(app.tenant_id)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(scopes),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access,
        }
        lowered = {s.lower() for s in scopes}
        with self._lock:
            self._tokens[access] = AccessToken(
                app.tenant_id, app.client_id, now + lifetime, frozenset(), user_id=user.id, scopes=perms
            )
            if "offline_access" in lowered:
                refresh = "gsimrt." + secrets.token_urlsafe(64)
                self._refresh[refresh] = _RefreshGrant(app.tenant_id, app.client_id, user.id, now)
                body["refresh_token"] = refresh
        if "openid" in lowered:
            body["id_token"] = self._id_token(app, user, tid, nonce, now, authority_host)
        if form.get("client_info") == "1":
            body["client_info"] = _client_info(user.id, tid)
        return body

    def _id_token(
        self, app: AppRegistration, user: DirectoryUser, tid: str, nonce: str | None, now: float, authority_host: str
    ) -> str:
        claims: dict[str, Any] = {
            "aud": app.client_id,
            "iss": f"{authority_host}/{tid}/v2.0",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now) + ID_TOKEN_LIFETIME,
            "name": user.display_name,
            "oid": user.id,
            "preferred_username": user.upn,
            "sub": _b64url(hashlib.sha256(f"{user.id}/{app.client_id.lower()}".encode()).digest()),
            "tid": tid,
            "uti": secrets.token_urlsafe(16),
            "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce
        header = {"typ": "JWT", "alg": "RS256", "kid": self._kid}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._signing_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    # -- Graph side ---------------------------------------------------------------------------
    def validate_bearer(self, authorization: str | None) -> AccessToken:
        """The token behind ``Authorization: Bearer ...`` or 401 InvalidAuthenticationToken."""
        challenge = {
            "WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
            'oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'
        }
        if not authorization or not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.", challenge)
        with self._lock:
            tok = self._tokens.get(authorization[7:].strip())
        if tok is None:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.", challenge)
        if tok.expires_at < time.time():
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
                challenge,
            )
        return tok

    @staticmethod
    def error_body(err: AadError, authority_host: str) -> dict[str, Any]:
        trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": err.error,
            "error_description": f"AADSTS{err.code}: {err.description} Trace ID: {trace} Correlation ID: "
            f"{corr} "
            f"Timestamp: {stamp}",
            "error_codes": [err.code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": f"{authority_host}/error?code={err.code}",
        }


#: Canonical spelling of the Graph permissions a delegated token may carry (names compare
#: case-insensitively; the ``scp`` claim spells them like this).
_KNOWN_PERMISSIONS = {
    name.lower(): name
    for name in (
        "Calendars.Read",
        "Calendars.ReadWrite",
        "Calendars.ReadBasic",
        "Calendars.Read.Shared",
        "Calendars.ReadWrite.Shared",
        "User.Read",
        "User.ReadBasic.All",
    )
}


def tenant_guid(tenant: str) -> str:
    """The directory's GUID (``tid``) for a tenant given as GUID or name (same rule as subscriptions.py)."""
    try:
        return str(uuid.UUID(tenant))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"graphsim-tenant:{tenant.lower()}"))


def _client_info(user_id: str, tid: str) -> str:
    return _b64url(json.dumps({"uid": user_id, "utid": tid}).encode())


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    return uri + ("&" if "?" in uri else "?") + urlencode(params)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
