"""The secrets store: CalDAV passwords, the Graph client secret or certificate, token caches.

One interface, two implementations chosen by configuration: ``LocalFileSecretStore``
(embedded default, a 0600 JSON file) and Azure Key Vault (a later issue). Names use only
``0-9a-zA-Z-`` so the same name is valid in Key Vault (1-127 characters).
"""

from __future__ import annotations

import re
from typing import Protocol

_VALID_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")


def check_secret_name(name: str) -> str:
    """Key Vault secret names: 1-127 characters of ``0-9a-zA-Z-``."""
    if not _VALID_NAME.match(name):
        raise ValueError("secret names must be 1-127 characters of 0-9, a-z, A-Z and '-'")
    return name


class SecretStore(Protocol):
    def get(self, name: str) -> str | None: ...
    def set(self, name: str, value: str) -> None: ...
    def delete(self, name: str) -> None: ...
