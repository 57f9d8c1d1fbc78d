"""The Graph stand-in in its own process, driven through its ``/_sim`` admin endpoints.

Load tests (a burst of notifications) must not share one Python interpreter, and so one GIL,
between "Microsoft Graph" and the function app under test: in production they are different
machines. :class:`RemoteGraphSim` starts ``python -m devtools.graphsim`` as a child process
(stopped with its process group) and offers the subset of :class:`GraphSim`'s API the tests
use, each call one admin request.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import requests

from devtools.servers import _ManagedProcess, _port_open, free_port


class RemoteGraphSim:
    def __init__(self, state_dir: Path, *, start_timeout: float = 30.0) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.ca_path = str(self.state_dir / "ca.pem")
        self._proc = _ManagedProcess(
            "graphsim", [sys.executable, "-m", "devtools.graphsim", "--port", str(self.port),
                         "--state-dir", str(self.state_dir)],
            self.state_dir / "graphsim.log", cwd=Path(__file__).resolve().parents[2])
        self._proc.wait_until(lambda: _port_open(self.port) and Path(self.ca_path).exists(), start_timeout,
                              "the Graph stand-in's port")
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.verify = self.ca_path
        deadline = time.monotonic() + start_timeout
        while self._call("GET", "health").get("status") != "ok":  # pragma: no cover - ready at once
            if time.monotonic() > deadline:
                raise RuntimeError("the Graph stand-in did not become healthy")
            time.sleep(0.1)

    @property
    def authority_host(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def graph_url(self) -> str:
        return f"{self.authority_host}/v1.0"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        reply = self._session.request(method, f"{self.authority_host}/_sim/{path}", json=body, timeout=timeout)
        reply.raise_for_status()
        return reply.json() if reply.content else None

    def register_app(self, tenant_id: str, client_id: str, client_secret: str) -> None:
        self._call("POST", "apps", {"tenant_id": tenant_id, "client_id": client_id, "client_secret": client_secret})

    def add_user(self, upn: str) -> str:
        return str(self._call("POST", "users", {"upn": upn})["id"])

    def subscriptions(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "subscriptions")["value"])

    def expire_subscription(self, subscription_id: str) -> None:
        self._call("POST", f"subscriptions/{subscription_id}/expire")

    def send_lifecycle(self, subscription_id: str, event: str) -> bool:
        return bool(self._call("POST", f"subscriptions/{subscription_id}/lifecycle", {"event": event})["queued"])

    @property
    def notification_log(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "notifications")["value"])

    def reset_notification_log(self) -> None:
        self._call("DELETE", "notifications")

    @property
    def validation_log(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "validations")["value"])

    def wait_for_notifications(self, timeout: float = 10.0) -> bool:
        return bool(self._call("POST", "notifications/wait", {"timeout": timeout}, timeout=timeout + 10)["idle"])

    def issue_server_certificate(self, hosts: tuple[str, ...] = ("127.0.0.1",)) -> tuple[str, str]:
        answer = self._call("POST", "server-certificates", {"hosts": list(hosts)})
        return str(answer["cert"]), str(answer["key"])

    @property
    def request_log(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "requests", timeout=120)["value"])

    def reset_request_log(self) -> None:
        self._call("DELETE", "requests")

    def set_latency(self, seconds: float) -> None:
        """Every Graph answer waits ``seconds`` first (a round trip to a distant service)."""
        self._call("POST", "latency", {"seconds": seconds})

    def stop(self) -> None:
        self._session.close()
        self._proc.stop()

    def __enter__(self) -> RemoteGraphSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
