"""HTTP sessions for the Graph, CalDAV, Table and Queue clients: pooled, and without the
per-request environment lookups when the environment has nothing for them to find.

``requests`` (and ``niquests``, which caldav uses) with ``trust_env`` on look at the
environment on EVERY request: the proxy variables and ``no_proxy`` matching
(``Session.merge_environment_settings``), ``~/.netrc`` for credentials
(``get_netrc_auth``), ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``. In a Functions worker
syncing 1,000 users per tick that was about 12 % of the host's CPU (``make bench``, tick).
The environment does not change while a worker runs, so it is looked at once per process:
when it names none of those, ``trust_env`` is turned off, which changes nothing but the
cost; when it names any, requests keep looking as before (a proxy set by the admin still
applies, ``no_proxy`` included).

azure-core's ``RequestsTransport`` mounts an adapter with urllib3's default of 10 pooled
connections per host; the Functions host runs up to 32 syncs at once against the same
Table endpoint, and a full pool drops each extra connection after its request (a new TCP
and TLS handshake every time). :func:`azure_transport` keeps up to ``POOL_SIZE``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import requests
from requests.adapters import HTTPAdapter, Retry

#: Connections kept per host (the host's thread pool, ``PYTHON_THREADPOOL_THREAD_COUNT``).
POOL_SIZE = 32

#: Variables requests reads per request when ``trust_env`` is on (any case).
_LOOKED_UP = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle",
                        "curl_ca_bundle", "netrc"})


@functools.cache
def environment_lookups_needed() -> bool:
    """True when the environment holds something requests' per-request lookups would use:
    a proxy or CA-bundle variable, ``NETRC``, or a ``~/.netrc`` / ``~/_netrc`` file."""
    if any(name.lower() in _LOOKED_UP for name in os.environ):
        return True
    return any(os.path.exists(os.path.expanduser(name)) for name in ("~/.netrc", "~/_netrc"))


def tune_session(session: Any) -> Any:
    """Turn off a requests / niquests session's environment lookups when nothing is there."""
    if not environment_lookups_needed():
        session.trust_env = False
    return session


def new_session() -> requests.Session:
    """A ``requests.Session`` for Graph (see :func:`tune_session`)."""
    return tune_session(requests.Session())


def azure_transport() -> Any:
    """The transport for azure-data-tables / azure-storage-queue clients: azure-core's
    ``RequestsTransport`` on a session pooling ``POOL_SIZE`` connections, urllib3's own
    retries off (the Azure pipeline retries), environment lookups as :func:`tune_session`."""
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE,
                          max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)
    session.trust_env = environment_lookups_needed()
    return RequestsTransport(session=session, session_owner=True, use_env_settings=session.trust_env)
