"""A small local stand-in for the Azure Functions host, for tests (Core Tools ``func`` can't be installed here).

It runs the triggers of a Python v2-model ``azure.functions.FunctionApp`` in-process, against
Azurite (or any storage account reachable by connection string)::

    with FunctionHost(function_app.app, settings={"AzureWebJobsStorage": azurite.connection_string,
                                                  "SYNC_SCHEDULE": "0 */5 * * * *"},
                      host_json=Path("host.json")) as host:
        requests.post(host.function_url("admin_sync_now", upn="ada@contoso.test"))
        host.tick("sync_timer")
        assert host.wait_idle(10)

Public API::

    FunctionHost(app, *, settings, host_json=None, function_key=<random>, ssl_context=None,
                 max_workers=None, wrong_method_status=405)
        .start() -> host, .stop(timeout=30.0), or ``with FunctionHost(...) as host:``
        .base_url / .port / .url(route) / .function_url(name, **route_params)  # the latter adds ?code=
        .tick(function_name, past_due=False) -> Invocation
        .invocations -> list[Invocation]  # a snapshot, safe to read while the host runs
        .wait_idle(timeout=10.0) -> bool
        .functions / .queue_options / .function_key / .route_prefix
    Invocation(function, trigger, started, finished, ok, error, dequeue_count)
    FunctionHostError  # the app, a setting or host.json can't be hosted: raised by the constructor

The functions come from ``app.get_functions()`` (bindings from ``get_function_json()``, the callable
from ``get_user_function()``); ``%SETTING%`` expressions in binding properties are resolved from
``settings`` only.  ``os.environ`` is never read or written: the app reads its own settings.

What it emulates (behaviour of the Functions host v4 + storage extension 5.x, as documented in
"Azure Queue storage trigger for Azure Functions", the host.json reference and the WebJobs
``QueueProcessor``/``QueuesOptions`` sources):

* HTTP triggers, served on 127.0.0.1 (random free port; HTTPS when an ``ssl.SSLContext`` is given) at
  ``/<routePrefix>/<route>`` (``extensions.http.routePrefix``, default ``api``; route defaults to the
  function name).  Route templates: literal segments (case-insensitive), ``{name}``, ``{name?}``,
  ``{*rest}`` and the constraints ``int``/``long``/``alpha``/``bool``/``guid``; route values are
  URL-decoded except ``%2F`` (as ASP.NET Core).  The trigger's ``methods`` (none = all); another method
  on a matching route answers ``wrong_method_status`` (405 by default -- NB: the real host answers
  404, azure-functions-host#10098).  authLevel ``function``/``admin`` need the key as ``?code=`` or
  header ``x-functions-key`` (else 401); ``anonymous`` is open.  There is ONE key (``function_key``),
  accepted for both levels (the real host has function, host and master keys).  The function gets
  ``func.HttpRequest(method, url, headers=, params=, route_params=, body=)``: ``url`` is absolute,
  ``params`` the decoded query (a repeated name -> values joined with ``,``, as the host does),
  headers likewise.  A returned ``func.HttpResponse`` goes to the wire with its status, headers and
  body; ``Content-Type`` = mimetype (+ ``; charset=`` for ``text/*``) unless set, as the Python worker
  does.  A returned ``str`` -> 200 text/plain.  A handler exception or any other return value -> 500
  with an empty body (logged).  Threaded server: a burst of requests is served concurrently.
* Queue triggers (azure-storage-queue), one poller per function, connection string = the setting
  named by the binding's ``connection`` (or ``AzureWebJobs<connection>``; empty -> ``AzureWebJobsStorage``).
  host.json ``extensions.queues``: ``messageEncoding`` (``base64`` default, decoded strictly, or
  ``none``), ``batchSize`` (16; fetched and run concurrently), ``newBatchThreshold`` (batchSize/2: a
  new batch is fetched while no more than that many are running), ``visibilityTimeout`` (0: delay
  before a failed message is retried), ``maxDequeueCount`` (5).  Messages are received invisible for
  10 minutes (as the host does); success deletes the message; failure releases it with
  ``visibilityTimeout`` until the ``maxDequeueCount``-th failure, which moves it to ``<queue>-poison``
  (created if needed; content base64-encoded as the host writes it) and deletes it.  A message that
  cannot be decoded, or that arrives with a dequeue count above ``maxDequeueCount``, goes to the poison
  queue without an invocation.  Queues named ``*-poison`` or too long for the suffix have no poison
  queue: failed messages there are left invisible (host behaviour).  The function gets
  ``func.QueueMessage(id=, body=<decoded bytes>, dequeue_count=, expiration_time=, insertion_time=,
  time_next_visible=, pop_receipt=)``.  The queue names are lower-cased (as the host does) and the
  trigger queues are created at start (the real host waits for them to exist instead).
  Polling: randomized exponential back-off from 100 ms to at most ``min(maxPollingInterval,
  1 s)`` -- the host's default maximum is 1 minute, the stand-in polls faster so tests are fast.
* Timer triggers: no scheduler.  ``tick(name, past_due=False)`` runs the function once with a
  ``TimerRequest`` (the host fires them itself in Azure); ticks of one function never overlap.  The
  NCRONTAB schedule (after ``%SETTING%`` resolution) must have 6 fields, checked at construction.
  ``runOnStartup=True`` functions are ticked once at ``start()``.
* Sync callables run in a thread pool (``max_workers``, default ``min(32, cpu + 4)`` like the Python
  worker's default ``PYTHON_THREADPOOL_THREAD_COUNT``); ``async def`` ones run in that pool with
  their own event loop (the worker uses one shared loop).  A ``context`` parameter gets a
  ``func.Context``.
* Every invocation is recorded in ``host.invocations`` (``Invocation``: function, trigger, monotonic
  started/finished, ok, error text, dequeue_count for queue messages).  ``wait_idle(timeout)``: every
  polled queue is empty (``approximate_message_count`` counts invisible messages too) and nothing runs.

What it does NOT emulate: the timer schedule itself, its blob lease (singleton across instances)
and schedule monitor (``TimerRequest.schedule_status`` is empty); the scale controller (one
"instance"); extension bundles (only the http/queue/timer triggers and the http ``$return`` output
are supported -- any other binding is refused at construction); retry policies; dynamic
concurrency; identity-based connections (``<conn>__queueServiceUri``); host/master/system keys, the
admin API, CORS, EasyAuth, the landing page; ``functionTimeout`` (a hung function keeps its thread;
queue message visibility is not renewed past 10 minutes); the 230 s HTTP response cap; the ``func``
worker process model (the app runs in the test process, sharing its globals).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import inspect
import json
import logging
import os
import random
import re
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import azure.functions as func
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.functions import _abc as func_abc
from azure.functions.queue import QueueMessage as FuncQueueMessage  # the worker's subclass, with metadata
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient
from azure.storage.queue import QueueMessage as StorageQueueMessage

log = logging.getLogger("devtools.funchost")

HOST = "127.0.0.1"
DEFAULT_ROUTE_PREFIX = "api"
POLL_MIN_SECONDS = 0.1  # QueuePollingIntervals.Minimum
IDLE_POLL_MAX_SECONDS = 1.0  # the host's default maxPollingInterval is 00:01:00
RECEIVE_VISIBILITY_SECONDS = 600  # QueueListener receives messages invisible for 10 minutes
MAX_BATCH_SIZE = 32
POISON_SUFFIX = "-poison"
DEFAULT_STOP_TIMEOUT = 30.0
_SETTING_EXPR = re.compile(r"%([^%\s]+)%")
_QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*,/\-]+$")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer"}


class FunctionHostError(RuntimeError):
    """The app (or its settings / host.json) can't be hosted as given; the message says why."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Invocation:
    """One function execution.  ``started``/``finished`` are ``time.monotonic()`` values."""

    function: str
    trigger: str  # "http" | "queue" | "timer"
    started: float
    finished: float
    ok: bool
    error: str | None = None  # "ExceptionType: message" when not ok
    dequeue_count: int | None = None  # queue triggers only

    @property
    def duration(self) -> float:
        return self.finished - self.started


# --------------------------------------------------------------------------- host.json / settings


def parse_timespan(value: object, what: str) -> float:
    """host.json TimeSpan (``[d.]hh:mm:ss[.fff]``) -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)  # Functions 1.x style milliseconds are NOT accepted: 2.x+ uses TimeSpan
    m = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d+)?)", str(value).strip())
    if not m:
        raise FunctionHostError(f"host.json {what}: {value!r} is not a TimeSpan like '00:00:30'")
    days, hours, minutes, seconds = m.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class QueueOptions:
    """host.json ``extensions.queues`` with the host's defaults (one vCPU: newBatchThreshold = batchSize/2)."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"
    max_polling_interval: float = 60.0

    @classmethod
    def from_host_json(cls, host_json: Mapping[str, Any]) -> QueueOptions:
        raw = dict((host_json.get("extensions") or {}).get("queues") or {})
        known = {"batchSize", "newBatchThreshold", "visibilityTimeout", "maxDequeueCount",
                 "messageEncoding", "maxPollingInterval"}
        unknown = set(raw) - known
        if unknown:
            raise FunctionHostError(f"host.json extensions.queues: unknown setting(s) {sorted(unknown)}")
        batch = int(raw.get("batchSize", 16))
        if not 1 <= batch <= MAX_BATCH_SIZE:
            raise FunctionHostError(f"host.json extensions.queues.batchSize must be 1..{MAX_BATCH_SIZE}, got {batch}")
        threshold = int(raw.get("newBatchThreshold", batch // 2))
        if threshold < 0:
            raise FunctionHostError("host.json extensions.queues.newBatchThreshold must be >= 0")
        max_dequeue = int(raw.get("maxDequeueCount", 5))
        if max_dequeue < 1:
            raise FunctionHostError("host.json extensions.queues.maxDequeueCount must be >= 1")
        encoding = str(raw.get("messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise FunctionHostError(f"host.json extensions.queues.messageEncoding: base64 or none, not {encoding!r}")
        polling = parse_timespan(raw.get("maxPollingInterval", "00:01:00"), "extensions.queues.maxPollingInterval")
        if polling < POLL_MIN_SECONDS:
            raise FunctionHostError("host.json extensions.queues.maxPollingInterval must be >= 00:00:00.100")
        visibility = parse_timespan(raw.get("visibilityTimeout", "00:00:00"), "extensions.queues.visibilityTimeout")
        return cls(batch, threshold, visibility, max_dequeue, encoding, polling)


def load_host_json(host_json: Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if host_json is None:
        return {"version": "2.0"}
    if isinstance(host_json, Mapping):
        data: Any = dict(host_json)
    else:
        data = json.loads(Path(host_json).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or str(data.get("version", "")) != "2.0":
        raise FunctionHostError('host.json must be an object with "version": "2.0"')
    return data


def resolve_settings(value: str, settings: Mapping[str, str], where: str) -> str:
    """Replace every ``%NAME%`` in ``value`` by ``settings[NAME]`` (missing -> FunctionHostError)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in settings:
            raise FunctionHostError(f"{where}: '%{name}%' does not resolve to a value (no setting {name!r})")
        return settings[name]

    return _SETTING_EXPR.sub(one, value)


def validate_ncrontab(schedule: str, where: str) -> str:
    """A 6-field NCRONTAB expression (``{second} {minute} {hour} {day} {month} {day-of-week}``)."""
    fields = schedule.split()
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise FunctionHostError(
            f"{where}: schedule {schedule!r} is not a 6-field NCRONTAB expression "
            "'{second} {minute} {hour} {day} {month} {day-of-week}', e.g. '0 */5 * * * *'"
        )
    return schedule


# --------------------------------------------------------------------------- routes

_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?i:true|false)",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
}


@dataclass(frozen=True)
class RouteTemplate:
    """An ASP.NET-style route template (the subset the stand-in understands)."""

    template: str
    regex: re.Pattern[str]
    params: tuple[str, ...]  # in template order
    optional: frozenset[str]
    precedence: tuple[int, ...]

    @classmethod
    def parse(cls, template: str, where: str) -> RouteTemplate:
        template = template.strip("/")
        pattern = ""
        params: list[str] = []
        optional: set[str] = set()
        precedence: list[int] = []
        segments = template.split("/") if template else []
        for index, segment in enumerate(segments):
            parts = re.split(r"(\{[^{}]*\})", segment)
            tokens = [p for p in parts if p]
            if not tokens:
                raise FunctionHostError(f"{where}: empty segment in route {template!r}")
            seg_pattern = ""
            seg_rank = 1
            seg_optional = False
            for token in tokens:
                if not token.startswith("{"):
                    if "{" in token or "}" in token:
                        raise FunctionHostError(f"{where}: bad route {template!r}")
                    seg_pattern += re.escape(token)
                    continue
                spec = token[1:-1]
                catch_all = spec.startswith("*")
                spec = spec.lstrip("*")
                is_optional = spec.endswith("?")
                spec = spec.rstrip("?")
                name, _, constraint = spec.partition(":")
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or "=" in spec:
                    raise FunctionHostError(f"{where}: route parameter {token!r} in {template!r} is not supported")
                if constraint and constraint not in _CONSTRAINTS:
                    raise FunctionHostError(
                        f"{where}: route constraint {constraint!r} in {template!r} is not supported "
                        f"(the stand-in knows {', '.join(_CONSTRAINTS)})"
                    )
                if name in params:
                    raise FunctionHostError(f"{where}: route parameter {name!r} appears twice in {template!r}")
                if (catch_all or is_optional) and (index != len(segments) - 1 or len(tokens) != 1):
                    raise FunctionHostError(f"{where}: {token!r} must be the whole last segment of {template!r}")
                value = ".*" if catch_all else _CONSTRAINTS.get(constraint, r"[^/]+")
                seg_pattern += f"(?P<p{len(params)}>{value})"
                params.append(name)
                if catch_all or is_optional:
                    optional.add(name)
                    seg_optional = True
                seg_rank = max(seg_rank, 5 if catch_all else 4 if is_optional else 2 if constraint else 3)
            if index:
                seg_pattern = ("(?:/" + seg_pattern + ")?") if seg_optional else ("/" + seg_pattern)
            elif seg_optional:
                seg_pattern = "(?:" + seg_pattern + ")?"
            pattern += seg_pattern
            precedence.append(seg_rank)
        regex = re.compile(pattern + "/?", re.IGNORECASE)
        return cls(template, regex, tuple(params), frozenset(optional), tuple(precedence))

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        out = {}
        for i, name in enumerate(self.params):
            value = m.group(f"p{i}")
            if value is not None and value != "":
                out[name] = value
        return out

    def build(self, values: Mapping[str, object]) -> str:
        missing = [p for p in self.params if p not in self.optional and p not in values]
        extra = set(values) - set(self.params)
        if missing or extra:
            raise ValueError(f"route {self.template!r}: missing {missing}, unknown {sorted(extra)}")

        def fill(m: re.Match[str]) -> str:
            spec = m.group(1)
            name = spec.lstrip("*").rstrip("?").partition(":")[0]
            if name not in values:
                return ""
            safe = "/" if spec.startswith("*") else ""
            return quote(str(values[name]), safe=safe)

        return re.sub(r"\{([^{}]*)\}", fill, self.template).rstrip("/")


def _decode_path(raw_path: str) -> str:
    """Percent-decode a request path, keeping ``%2F`` encoded (ASP.NET Core does the same)."""
    return unquote(re.sub(r"%2[Ff]", "%252F", raw_path))


# --------------------------------------------------------------------------- functions


@dataclass
class _Function:
    name: str
    kind: str  # http | queue | timer
    trigger: dict[str, Any]  # the trigger binding, %SETTING% resolved
    callable: Callable[..., Any]
    arg_name: str
    wants_context: bool
    # http
    route: RouteTemplate | None = None
    methods: frozenset[str] | None = None
    auth_level: str = "function"
    # queue
    queue_name: str = ""
    connection_string: str = ""
    # timer
    tick_lock: threading.Lock = field(default_factory=threading.Lock)


class _TraceContext(func_abc.TraceContext):
    def __init__(self) -> None:
        self._parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(func_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class _Context(func_abc.Context):
    def __init__(self, function_name: str) -> None:
        self._invocation_id = str(uuid.uuid4())
        self._function_name = function_name
        self._local = threading.local()
        self._trace = _TraceContext()
        self._retry = _RetryContext()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return os.getcwd()

    @property
    def trace_context(self) -> _TraceContext:
        return self._trace

    @property
    def retry_context(self) -> _RetryContext:
        return self._retry


def _get_functions(app: func.FunctionApp) -> list[Any]:
    """``app.get_functions()``, repeatable.

    azure-functions 1.26 remembers the names it has seen in ``app.functions_bindings`` (its
    duplicate-name check), so a second ``get_functions()`` on the same app raises "does not have a
    unique function name" -- the worker indexes once per process, tests host an app many times.
    The check still runs on this call's functions; the attribute is restored afterwards.
    """
    saved = getattr(app, "functions_bindings", None)
    app.functions_bindings = None
    try:
        return list(app.get_functions())
    finally:
        app.functions_bindings = saved


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- the host


class FunctionHost:
    """Runs a FunctionApp's HTTP, queue and timer triggers locally (see the module docstring)."""

    def __init__(
        self,
        app: func.FunctionApp,
        *,
        settings: Mapping[str, str],
        host_json: Path | Mapping[str, Any] | None = None,
        function_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_workers: int | None = None,
        wrong_method_status: int = 405,
    ) -> None:
        self.settings: Mapping[str, str] = dict(settings)
        self.host_json = load_host_json(host_json)
        self.queue_options = QueueOptions.from_host_json(self.host_json)
        http_ext = (self.host_json.get("extensions") or {}).get("http") or {}
        self.route_prefix = str(http_ext.get("routePrefix", DEFAULT_ROUTE_PREFIX)).strip("/")
        self.function_key = function_key if function_key is not None else secrets.token_urlsafe(32)
        if not self.function_key:
            raise FunctionHostError("function_key must not be empty")
        self.ssl_context = ssl_context
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self.wrong_method_status = wrong_method_status
        self.functions: dict[str, _Function] = {}
        for f in _get_functions(app):
            fn = self._index(f)
            self.functions[fn.name] = fn
        self._http = sorted((f for f in self.functions.values() if f.kind == "http"),
                            key=lambda f: (cast(RouteTemplate, f.route).precedence, f.name))
        self._check_route_conflicts()

        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._invocations: list[Invocation] = []
        self._busy = 0  # HTTP requests, queue messages (receive -> completion) and ticks in progress
        self._executor: ThreadPoolExecutor | None = None
        self._server: _Server | None = None
        self._server_thread: threading.Thread | None = None
        self._pollers: list[_QueuePoller] = []
        self._stopping = threading.Event()
        self._running = False

    # ----------------------------------------------------------------- indexing

    def _index(self, f: Any) -> _Function:
        name = f.get_function_name()
        where = f"function {name!r}"
        bindings = json.loads(f.get_function_json())["bindings"]
        triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
        if len(triggers) != 1:
            raise FunctionHostError(f"{where}: expected exactly one trigger binding, got {len(triggers)}")
        trigger = {k: resolve_settings(v, self.settings, where) if isinstance(v, str) else v
                   for k, v in triggers[0].items()}
        kind = {"httpTrigger": "http", "queueTrigger": "queue", "timerTrigger": "timer"}.get(trigger["type"])
        if kind is None:
            raise FunctionHostError(f"{where}: trigger type {trigger['type']!r} is not emulated")
        for b in bindings:
            if b is triggers[0]:
                continue
            if not (kind == "http" and b.get("type") == "http" and str(b.get("direction", "")).upper() == "OUT"):
                raise FunctionHostError(
                    f"{where}: binding {b.get('name')!r} of type {b.get('type')!r} is not emulated "
                    "(only the http/queue/timer triggers and the http $return output are)"
                )
        user_fn = f.get_user_function()
        arg_name = str(trigger["name"])
        params = inspect.signature(user_fn).parameters
        if arg_name not in params:
            raise FunctionHostError(f"{where}: the callable has no parameter {arg_name!r} for its trigger")
        for p in params.values():
            if p.name not in (arg_name, "context") and p.default is inspect.Parameter.empty:
                raise FunctionHostError(f"{where}: parameter {p.name!r} is not bound to anything")
        fn = _Function(name=name, kind=kind, trigger=trigger, callable=user_fn, arg_name=arg_name,
                       wants_context="context" in params)
        if kind == "http":
            fn.route = RouteTemplate.parse(str(trigger.get("route") or name), where)
            methods = trigger.get("methods")
            fn.methods = frozenset(str(m).upper() for m in methods) if methods else None
            fn.auth_level = str(trigger.get("authLevel") or "function").lower()
            if fn.auth_level not in ("anonymous", "function", "admin"):
                raise FunctionHostError(f"{where}: authLevel {fn.auth_level!r} is not emulated")
        elif kind == "queue":
            fn.queue_name = str(trigger.get("queueName", "")).lower()
            if not _QUEUE_NAME.match(fn.queue_name):
                raise FunctionHostError(f"{where}: {fn.queue_name!r} is not a valid queue name")
            fn.connection_string = self._connection_string(str(trigger.get("connection") or ""), where)
        else:
            validate_ncrontab(str(trigger.get("schedule", "")), where)
        return fn

    def _connection_string(self, connection: str, where: str) -> str:
        names = [connection, f"AzureWebJobs{connection}"] if connection else ["AzureWebJobsStorage"]
        for setting in names:
            if self.settings.get(setting):
                return self.settings[setting]
        if any(k.startswith(f"{names[0]}__") for k in self.settings):
            raise FunctionHostError(f"{where}: identity-based connection {names[0]!r} is not emulated")
        raise FunctionHostError(f"{where}: no connection string setting {' or '.join(map(repr, names))}")

    def _check_route_conflicts(self) -> None:
        seen: dict[tuple[str, str], str] = {}
        for fn in self._http:
            assert fn.route is not None
            key_route = re.sub(r"\{(\*?)\w+", r"{\1", fn.route.template.lower())
            for method in sorted(fn.methods or {"*"}):
                other = seen.setdefault((key_route, method), fn.name)
                if other != fn.name:
                    raise FunctionHostError(f"functions {other!r} and {fn.name!r} share route {fn.route.template!r}")

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FunctionHost:
        """Create the trigger queues, start serving HTTP and polling queues; returns ``self``."""
        if self._running or self._executor is not None:
            raise FunctionHostError("host already started")
        self._stopping.clear()
        self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="funchost-worker")
        try:
            for fn in self.functions.values():
                if fn.kind == "queue":
                    poller = _QueuePoller(self, fn)
                    self._pollers.append(poller)
                    poller.create_queue()
            self._server = _Server(self)
        except BaseException:
            self._teardown(0.0)
            raise
        self._server_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                               name="funchost-http", daemon=True)
        self._server_thread.start()
        self._running = True
        for poller in self._pollers:
            poller.thread.start()
        for fn in self.functions.values():
            if fn.kind == "timer" and fn.trigger.get("runOnStartup"):
                threading.Thread(target=self.tick, args=(fn.name,), name=f"funchost-startup-{fn.name}",
                                 daemon=True).start()
        log.info("function host listening on %s: %s", self.base_url, ", ".join(sorted(self.functions)))
        return self

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop polling and serving, wait (up to ``timeout``) for running invocations, release everything."""
        if self._running:
            self._teardown(timeout)

    def _teardown(self, timeout: float) -> None:
        self._running = False
        self._stopping.set()
        for poller in self._pollers:
            poller.wake()
        for poller in self._pollers:
            if poller.thread.is_alive():
                poller.thread.join(timeout)
        if self._server is not None and self._server_thread is not None:
            self._server.shutdown()  # no new connections; requests in progress finish below
        with self._idle:
            drained = self._idle.wait_for(lambda: self._busy == 0, timeout)
        if not drained:
            log.warning("function host stopped with %d invocation(s) still running", self._busy)
        if self._server is not None:
            self._server.close_connections()
            self._server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(timeout)
        for poller in self._pollers:
            poller.close()
        if self._executor is not None:
            self._executor.shutdown(wait=drained, cancel_futures=True)
        self._pollers = []
        self._server = None
        self._server_thread = None
        self._executor = None

    def __enter__(self) -> FunctionHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- URLs

    @property
    def port(self) -> int:
        if self._server is None:
            raise FunctionHostError("host not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{HOST}:{self.port}"

    def url(self, route: str) -> str:
        """Absolute URL of ``/<routePrefix>/<route>`` (no key)."""
        prefix = f"/{self.route_prefix}" if self.route_prefix else ""
        return f"{self.base_url}{prefix}/{route.lstrip('/')}"

    def function_url(self, name: str, **route: object) -> str:
        """URL of HTTP function ``name`` with its route parameters filled in, plus ``?code=`` unless anonymous."""
        fn = self.functions[name]
        if fn.kind != "http" or fn.route is None:
            raise ValueError(f"{name!r} is not an HTTP function")
        url = self.url(fn.route.build(route))
        if fn.auth_level != "anonymous":
            url += "?" + urlencode({"code": self.function_key})
        return url

    # ----------------------------------------------------------------- invocations

    @property
    def invocations(self) -> list[Invocation]:
        """A snapshot (copy) of every invocation so far, in completion order."""
        with self._lock:
            return list(self._invocations)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once every polled queue is empty (invisible messages included) and nothing is running."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                before = (self._busy, len(self._invocations))
            if before[0] == 0 and all(p.approximate_count() == 0 for p in self._pollers):
                with self._lock:
                    if (self._busy, len(self._invocations)) == before:
                        return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def tick(self, function_name: str, past_due: bool = False) -> Invocation:
        """Fire timer function ``function_name`` once (synchronously) and return its Invocation.

        Like the host, a failing timer function is logged and recorded, not raised.  Ticks of one
        function are serialized (a timer never overlaps itself).
        """
        fn = self.functions[function_name]
        if fn.kind != "timer":
            raise ValueError(f"{function_name!r} is not a timer function")
        if not self._running or self._executor is None:
            raise FunctionHostError("host not started")
        self._enter()
        try:
            with fn.tick_lock:
                request = TimerRequest(past_due=past_due, schedule={"AdjustForDST": True})
                return self._executor.submit(self._invoke, fn, request, None).result()[0]
        finally:
            self._leave()

    def _enter(self) -> None:
        with self._lock:
            self._busy += 1

    def _leave(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def _invoke(self, fn: _Function, trigger_value: Any, dequeue_count: int | None) -> tuple[Invocation, Any]:
        """Run the user function (in a pool thread); returns the record and the return value."""
        kwargs: dict[str, Any] = {fn.arg_name: trigger_value}
        if fn.wants_context:
            kwargs["context"] = _Context(fn.name)
        started = time.monotonic()
        result: Any = None
        error: str | None = None
        try:
            result = fn.callable(**kwargs)
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
            if fn.kind == "http" and not isinstance(result, str | func_abc.HttpResponse):
                # the Python worker fails such an invocation ("unable to encode outgoing TypedData")
                raise TypeError(f"unable to encode outgoing TypedData: unsupported type {type(result).__name__}")
        except Exception as exc:
            error = _error_text(exc)
            log.exception("Executed '%s' (Failed)", fn.name)
        record = Invocation(fn.name, fn.kind, started, time.monotonic(), error is None, error, dequeue_count)
        with self._lock:
            self._invocations.append(record)
        return record, result

    def _run_http(self, fn: _Function, request: func.HttpRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self._executor is not None
        record, result = self._executor.submit(self._invoke, fn, request, None).result()
        if not record.ok:
            return 500, [], b""
        if isinstance(result, str):
            return 200, [("Content-Type", "text/plain; charset=utf-8")], result.encode("utf-8")
        headers = [(k, str(v)) for k, v in result.headers.items() if k.lower() not in _HOP_BY_HOP]
        if not any(k.lower() == "content-type" for k, _ in headers):
            mimetype, charset = result.mimetype or "text/plain", result.charset or "utf-8"
            headers.append(("Content-Type", f"{mimetype}; charset={charset}" if mimetype.startswith("text/")
                            else mimetype))
        return int(result.status_code), headers, result.get_body() or b""

    # ----------------------------------------------------------------- HTTP routing

    def _route(self, method: str, path: str) -> tuple[_Function | None, dict[str, str], list[str]]:
        """(function, route params, allowed methods when the path matched but the method did not)."""
        decoded = _decode_path(path).lstrip("/")
        if self.route_prefix:
            prefix = self.route_prefix.lower() + "/"
            if decoded.lower() == self.route_prefix.lower():
                decoded = ""
            elif decoded.lower().startswith(prefix):
                decoded = decoded[len(prefix):]
            else:
                return None, {}, []
        allowed: list[str] = []
        for fn in self._http:
            assert fn.route is not None
            params = fn.route.match(decoded)
            if params is None:
                continue
            if fn.methods is None or method in fn.methods:
                return fn, params, []
            allowed.extend(sorted(fn.methods))
        return None, {}, allowed

    def _authorized(self, fn: _Function, query: list[tuple[str, str]], headers: Mapping[str, str]) -> bool:
        if fn.auth_level == "anonymous":
            return True
        offered = [v for k, v in query if k.lower() == "code"]
        if "x-functions-key" in headers:
            offered.append(headers["x-functions-key"])
        return any(hmac.compare_digest(o.encode(), self.function_key.encode()) for o in offered)


# --------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() drains requests itself and closes idle keep-alive connections
    request_queue_size = 128  # socketserver's 5 drops SYNs under a burst (1 s client retransmit)

    def __init__(self, host: FunctionHost) -> None:
        self.host = host
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__((HOST, 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the per-connection thread, so a slow TLS handshake never blocks accept().
        conn = request
        if self.host.ssl_context is not None:
            request.settimeout(10)
            try:
                conn = self.host.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
            conn.settimeout(None)
        with self._conn_lock:
            self._connections.add(conn)
        try:
            super().finish_request(conn, client_address)
        finally:
            with self._conn_lock:
                self._connections.discard(conn)
            if conn is not request:  # the TLS socket; socketserver closes only the (detached) raw one
                conn.close()

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "davbridge-funchost"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        host = self.server.host
        method = self.command.upper()
        split = urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError as exc:
            self._send(400, [("Content-Type", "text/plain; charset=utf-8")], str(exc).encode())
            return
        fn, route_params, allowed = host._route(method, split.path)
        if fn is None:
            if allowed:
                self._send(host.wrong_method_status, [("Allow", ", ".join(sorted(set(allowed))))], b"")
            else:
                self._send(404, [], b"")
            return
        query = parse_qsl(split.query, keep_blank_values=True)
        headers = self._joined_headers()
        if not host._authorized(fn, query, headers):
            self._send(401, [], b"")
            return
        params: dict[str, str] = {}
        for k, v in query:
            params[k] = f"{params[k]},{v}" if k in params else v
        url = f"{'https' if host.ssl_context else 'http'}://{headers.get('host', f'{HOST}:{host.port}')}{self.path}"
        request = func.HttpRequest(method, url, headers=headers, params=params, route_params=route_params, body=body)
        host._enter()  # before the stopping check, so stop() waits for this request
        try:
            response: tuple[int, list[tuple[str, str]], bytes] = (503, [], b"")
            if not host._stopping.is_set():
                response = host._run_http(fn, request)
        finally:
            host._leave()
        self._send(*response)

    def _joined_headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in self.headers:
            key = name.lower()
            if key not in out:
                out[key] = ",".join(self.headers.get_all(name) or [])
        return out

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise ValueError("bad chunked encoding") from None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise ValueError("bad Content-Length") from None
        return self.rfile.read(n)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


# --------------------------------------------------------------------------- queue trigger


class _QueuePoller:
    """One queue-trigger function's listener: fetch batches, run them concurrently, complete each message."""

    def __init__(self, host: FunctionHost, fn: _Function) -> None:
        self.thread = threading.Thread(target=self._run, name=f"funchost-queue-{fn.name}", daemon=True)
        self.host = host
        self.fn = fn
        self.options = host.queue_options
        self.client = QueueClient.from_connection_string(fn.connection_string, fn.queue_name, retry_total=2)
        poison_name = fn.queue_name + POISON_SUFFIX
        self.poison: QueueClient | None = None
        if not fn.queue_name.endswith(POISON_SUFFIX) and len(poison_name) <= 63:
            self.poison = QueueClient.from_connection_string(fn.connection_string, poison_name, retry_total=2)
        self._in_flight = 0
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self.max_poll = min(self.options.max_polling_interval, IDLE_POLL_MAX_SECONDS)

    def create_queue(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self.client.create_queue()

    def wake(self) -> None:
        self._wake.set()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        self.client.close()
        if self.poison is not None:
            self.poison.close()

    def approximate_count(self) -> int:
        try:
            return int(self.client.get_queue_properties().approximate_message_count or 0)
        except ResourceNotFoundError:
            return 0

    def _run(self) -> None:
        stopping = self.host._stopping
        delay = POLL_MIN_SECONDS
        while not stopping.is_set():
            with self._cond:
                self._cond.wait_for(
                    lambda: stopping.is_set() or self._in_flight <= self.options.new_batch_threshold)
            if stopping.is_set():
                break
            self._wake.clear()  # completions from here on cut the next wait short
            try:
                batch = list(self.client.receive_messages(
                    messages_per_page=self.options.batch_size, max_messages=self.options.batch_size,
                    visibility_timeout=RECEIVE_VISIBILITY_SECONDS))
            except ResourceNotFoundError:
                log.warning("queue %r does not exist; recreating it", self.fn.queue_name)
                self._safe(self.create_queue)
                batch = []
            except Exception:
                log.exception("receiving from queue %r failed", self.fn.queue_name)
                batch = []
            for message in batch:
                with self._cond:
                    self._in_flight += 1
                self.host._enter()
                try:
                    assert self.host._executor is not None
                    self.host._executor.submit(self._process, message)
                except RuntimeError:  # the executor was shut down under us
                    self._done()
            # randomized exponential back-off while idle; the minimum again once a message was found
            delay = POLL_MIN_SECONDS if batch else min(self.max_poll, delay * 2)
            self._wake.wait(max(POLL_MIN_SECONDS, delay * random.uniform(0.8, 1.0)))

    def _done(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()
        self.host._leave()

    @staticmethod
    def _safe(action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:
            log.exception("queue storage operation failed")

    def _decode(self, content: object) -> bytes:
        text = str(content or "")
        if self.options.message_encoding == "none":
            return text.encode("utf-8")
        return base64.b64decode(text, validate=True)

    def _process(self, message: StorageQueueMessage) -> None:
        try:
            try:
                body = self._decode(message.content)
            except (binascii.Error, ValueError):
                log.warning("Message decoding has failed! Check MessageEncoding settings. MessageId=%s", message.id)
                self._to_poison(message, str(message.content or "").encode("utf-8"))
                return
            dequeue_count = int(message.dequeue_count or 0)
            if dequeue_count > self.options.max_dequeue_count:
                self._to_poison(message, body)
                return
            trigger_value = FuncQueueMessage(
                id=message.id, body=body, dequeue_count=dequeue_count, expiration_time=message.expires_on,
                insertion_time=message.inserted_on, time_next_visible=message.next_visible_on,
                pop_receipt=message.pop_receipt)
            record, _ = self.host._invoke(self.fn, trigger_value, dequeue_count)
            if record.ok:
                self._delete(message)
            elif self.poison is None:
                pass  # no poison queue: leave the message invisible, as the host does
            elif dequeue_count >= self.options.max_dequeue_count:
                self._to_poison(message, body)
            else:
                self._release(message)
        except Exception:
            log.exception("processing message %s from %r failed", message.id, self.fn.queue_name)
        finally:
            self._done()
            self._wake.set()

    def _delete(self, message: StorageQueueMessage) -> None:
        try:
            self.client.delete_message(message.id, message.pop_receipt)
        except ResourceNotFoundError:
            log.debug("message %s already gone", message.id)
        except HttpResponseError as exc:
            if exc.status_code != 400:  # 400 = pop receipt mismatch: someone else owns it now
                raise

    def _release(self, message: StorageQueueMessage) -> None:
        try:
            self.client.update_message(message.id, message.pop_receipt,
                                       visibility_timeout=int(self.options.visibility_timeout))
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            if exc.status_code != 400:
                raise

    def _to_poison(self, message: StorageQueueMessage, body: bytes) -> None:
        if self.poison is None:
            log.warning("message %s from %r failed for good; no poison queue, leaving it invisible",
                        message.id, self.fn.queue_name)
            return
        log.warning("Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
                    self.options.max_dequeue_count, self.poison.queue_name)
        content = base64.b64encode(body).decode("ascii") if self.options.message_encoding == "base64" \
            else body.decode("utf-8", "replace")
        try:
            self.poison.send_message(content)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                self.poison.create_queue()
            self.poison.send_message(content)
        self._delete(message)

