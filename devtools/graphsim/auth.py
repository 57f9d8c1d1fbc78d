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
registry.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devtools.graphsim.odata import GraphError

GRAPH_RESOURCES = ("https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = 300  # seconds; AAD tolerates a few minutes


@dataclass
class AppRegistration:
    tenant_id: str
    client_id: str
    client_secret: str | None
    certificate: x509.Certificate | None

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


class AadError(Exception):
    def __init__(self, status: int, error: str, code: int, description: str):
        super().__init__(f"{status} {error} AADSTS{code}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description


class AuthService:
    """App registrations, issued access tokens, and the identity endpoints' logic."""

    def __init__(self, token_lifetime: int = 3599) -> None:
        self.token_lifetime = token_lifetime
        self._lock = threading.Lock()
        self._apps: dict[tuple[str, str], AppRegistration] = {}
        self._tenants: set[str] = set()
        self._tokens: dict[str, AccessToken] = {}

    def register_app(
        self,
        tenant_id: str,
        client_id: str,
        client_secret: str | None = None,
        certificate_pem: str | bytes | None = None,
    ) -> AppRegistration:
        """Register a confidential client with a secret, a certificate (public PEM), or both."""
        if not client_secret and not certificate_pem:
            raise ValueError("register_app needs client_secret or certificate_pem")
        cert = None
        if certificate_pem:
            raw = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            cert = x509.load_pem_x509_certificate(raw)
            if not isinstance(cert.public_key(), rsa.RSAPublicKey):
                raise ValueError("only RSA certificates are supported (msal signs RS256/PS256)")
        app = AppRegistration(tenant_id, client_id, client_secret, cert)
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
        """Answer ``POST /{tenant}/oauth2/v2.0/token`` (client credentials grant only)."""
        try:
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
        client_id = form.get("client_id", "")
        with self._lock:
            app = self._apps.get((tenant.lower(), client_id.lower()))
        if app is None:
            raise AadError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
            )
        self._check_scope(form.get("scope", ""))
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
        token = "gsim." + secrets.token_urlsafe(48)
        lifetime = self.token_lifetime
        with self._lock:
            self._tokens[token] = AccessToken(app.tenant_id, app.client_id, time.time() + lifetime)
        return token, lifetime

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
            "{corr} "
            f"Timestamp: {stamp}",
            "error_codes": [err.code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": f"{authority_host}/error?code={err.code}",
        }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
