"""Embedded secrets backend: one JSON file readable only by its owner (mode 0600)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

from sync_core.secrets.base import check_secret_name


class LocalFileSecretStore:
    """:class:`~sync_core.secrets.base.SecretStore` on a local file, written atomically, 0600."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"secrets file {self.path} must not be readable by others (mode {mode:o})")
        data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        return {str(k): str(v) for k, v in data.items()}

    def _write(self, data: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".secrets-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> str | None:
        with self._lock:
            return self._read().get(check_secret_name(name))

    def set(self, name: str, value: str) -> None:
        with self._lock:
            data = self._read()
            data[check_secret_name(name)] = value
            self._write(data)

    def delete(self, name: str) -> None:
        with self._lock:
            data = self._read()
            if data.pop(check_secret_name(name), None) is not None:
                self._write(data)
