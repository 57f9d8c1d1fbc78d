"""OData plumbing Graph uses: error bodies, ``Prefer`` headers, ``$select``/``$expand``/``$filter``.

Error bodies follow the Graph errors page: ``{"error": {"code", "message", "innerError":
{"date", "request-id", "client-request-id"}}}`` (status code, ``code`` string, message).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class GraphError(Exception):
    """An error answer: HTTP status, Graph error ``code`` and ``message`` (and extra headers)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(code: str, message: str, request_id: str, client_request_id: str) -> dict[str, Any]:
    """The JSON error object of Microsoft Graph (errors page, "JSON representation")."""
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }


def bad_request(code: str, message: str) -> GraphError:
    return GraphError(400, code, message)


# -- Prefer ---------------------------------------------------------------------------------
_PREF = re.compile(r'\s*([A-Za-z0-9_.\-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,;\s]*))?\s*(?:;[^,]*)?(?:,|$)')


def parse_prefer(values: list[str]) -> dict[str, str]:
    """``Prefer`` preferences (RFC 7240) by lower-cased name, values unquoted.

    Graph clients send e.g. ``Prefer: outlook.timezone="Pacific Standard Time"``,
    ``Prefer: IdType="ImmutableId"``, ``Prefer: odata.maxpagesize=50``, either as separate
    headers or comma-separated in one.
    """
    prefs: dict[str, str] = {}
    for header in values:
        pos = 0
        while pos < len(header):
            m = _PREF.match(header, pos)
            if not m or m.end() == pos:
                break
            name, raw = m.group(1), m.group(2) or ""
            if raw.startswith('"'):
                raw = raw[1:-1].replace('\\"', '"')
            prefs[name.lower()] = raw
            pos = m.end()
    return prefs


# -- $select / $expand ------------------------------------------------------------------------
def parse_select(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [p.strip() for p in value.split(",") if p.strip()]
    return names or None


_EXPAND_EXT = re.compile(
    r"^\s*singleValueExtendedProperties\s*(?:\(\s*\$filter\s*=\s*(?P<f>.*)\)\s*)?$", re.IGNORECASE | re.DOTALL
)
_ID_EQ = re.compile(r"^\s*id\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)


def split_expand(value: str) -> list[str]:
    """The comma-separated items of ``$expand`` (commas inside parentheses or quotes don't split)."""
    items: list[str] = []
    depth, quoted = 0, False
    current: list[str] = []
    for ch in value:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    items.append("".join(current).strip())
    return [item for item in items if item]


def parse_expand_extended(value: str | None) -> list[str] | None:
    """Extended property ids named by ``$expand=singleValueExtendedProperties($filter=id eq '...')``.

    Graph documents expanding extended properties only together with a ``$filter`` on ``id``
    (singlevaluelegacyextendedproperty-get); several ids may be or-ed.
    """
    if value is None:
        return None
    m = _EXPAND_EXT.match(value)
    if not m:
        raise bad_request("BadRequest", f"Parsing OData Select and Expand failed: unsupported $expand '{value}'.")
    if m.group("f") is None:
        raise bad_request(
            "ErrorInvalidUrlQuery",
            "Expanding singleValueExtendedProperties requires a $filter on the property id.",
        )
    ids: list[str] = []
    for part in re.split(r"\s+or\s+", m.group("f").strip(), flags=re.IGNORECASE):
        idm = _ID_EQ.match(part)
        if not idm:
            raise bad_request("ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
        ids.append(idm.group(1).replace("''", "'"))
    return ids


# -- extended property ids ---------------------------------------------------------------------
_EXT_TYPES = {
    t.lower(): t
    for t in (
        "Binary",
        "Boolean",
        "CLSID",
        "Currency",
        "Double",
        "Integer",
        "Long",
        "Null",
        "Object",
        "Short",
        "SystemTime",
        "String",
    )
}
_EXT_ID = re.compile(
    r"^\s*(?P<type>\w+)\s+(?:(?P<guid>\{[0-9a-fA-F-]{36}\})\s+(?P<kind>Name|Id)\s+(?P<name>.+?)|"
    r"(?P<tag>0x[0-9a-fA-F]{1,8}))\s*$",
    re.IGNORECASE,
)


def normalize_extended_property_id(value: str) -> str | None:
    """Canonical form of a single-value extended property id, or None if malformed.

    Formats (singleValueLegacyExtendedProperty resource, "Supported id formats"):
    ``{type} {guid} Name {name}``, ``{type} {guid} Id {hex id}``, ``{type} {proptag}``.
    """
    m = _EXT_ID.match(value) if isinstance(value, str) else None
    if not m or m.group("type").lower() not in _EXT_TYPES:
        return None
    type_name = _EXT_TYPES[m.group("type").lower()]
    if m.group("tag"):
        return f"{type_name} {m.group('tag').lower()}"
    kind = "Name" if m.group("kind").lower() == "name" else "Id"
    name = m.group("name") if kind == "Name" else m.group("name").lower()
    return f"{type_name} {m.group('guid').lower()} {kind} {name}"


# -- $filter ------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<punct>[(),:/])|"
    r"(?P<dt>\d{4}-\d{2}-\d{2}T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)|(?P<num>-?\d+(?:\.\d+)?)|"
    r"(?P<word>[A-Za-z_$][A-Za-z0-9_.$]*))"
)
_COMPARE = {"eq", "ne", "gt", "ge", "lt", "le"}


@dataclass
class _Tok:
    kind: str
    text: str


def _tokenize(expr: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise _filter_error()
        kind = m.lastgroup or ""
        toks.append(_Tok(kind, m.group(kind)))
        pos = m.end()
    return toks


def _filter_error() -> GraphError:
    return bad_request("ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")


@dataclass
class FilterContext:
    """How to read values from one item: ``get(path)`` for ``subject`` / ``start/dateTime``,
    ``collections[name]`` for lambda operators (``singleValueExtendedProperties``)."""

    get: Callable[[str], Any]
    collections: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)


Predicate = Callable[[FilterContext], bool]


class FilterParser:
    """A small OData ``$filter`` parser: comparisons, ``and``/``or``/``not``, parentheses, and the
    lambda ``coll/any(x: x/id eq '...' and x/value eq '...')`` Graph documents for extended
    properties (singlevaluelegacyextendedproperty-get).

    ``known_path(path)`` says whether a property path is filterable; others answer 400 like Graph
    ("Could not find a property named ... on type ...").
    """

    def __init__(self, expr: str, known_path: Callable[[str], bool], type_name: str):
        self.toks = _tokenize(expr)
        self.i = 0
        self.known_path = known_path
        self.type_name = type_name

    def parse(self) -> Predicate:
        pred = self._or()
        if self.i != len(self.toks):
            raise _filter_error()
        return pred

    def _peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _take(self) -> _Tok:
        tok = self._peek()
        if tok is None:
            raise _filter_error()
        self.i += 1
        return tok

    def _expect(self, text: str) -> None:
        if self._take().text != text:
            raise _filter_error()

    def _is_word(self, word: str) -> bool:
        tok = self._peek()
        return tok is not None and tok.kind == "word" and tok.text.lower() == word

    def _or(self, var: str | None = None) -> Predicate:
        left = self._and(var)
        while self._is_word("or"):
            self.i += 1
            right = self._and(var)
            left = (lambda a, b: lambda c: a(c) or b(c))(left, right)
        return left

    def _and(self, var: str | None) -> Predicate:
        left = self._unary(var)
        while self._is_word("and"):
            self.i += 1
            right = self._unary(var)
            left = (lambda a, b: lambda c: a(c) and b(c))(left, right)
        return left

    def _unary(self, var: str | None) -> Predicate:
        if self._is_word("not"):
            self.i += 1
            inner = self._unary(var)
            return lambda c: not inner(c)
        tok = self._peek()
        if tok is not None and tok.text == "(":
            self.i += 1
            inner = self._or(var)
            self._expect(")")
            return inner
        return self._comparison_or_lambda(var)

    def _path(self) -> list[str]:
        parts = [self._take().text]
        while (tok := self._peek()) is not None and tok.text == "/":
            self.i += 1
            parts.append(self._take().text)
        return parts

    def _comparison_or_lambda(self, var: str | None) -> Predicate:
        first = self._peek()
        if first is None or first.kind != "word":
            raise _filter_error()
        parts = self._path()
        if parts[-1].lower() in ("any", "all") and (tok := self._peek()) is not None and tok.text == "(":
            return self._lambda(parts[:-1], parts[-1].lower())
        op = self._take()
        if op.kind != "word" or op.text.lower() not in _COMPARE:
            raise _filter_error()
        literal = self._literal()
        if var is not None:
            if parts[0] != var or len(parts) != 2:
                raise _filter_error()
            member = parts[1]
            if member.lower() == "id" and isinstance(literal, str):
                # extended property ids compare in canonical form (type name, lower-case GUID)
                canon = normalize_extended_property_id(literal) or literal
                return lambda c: _compare(c.get(member), op.text.lower(), canon)
            return lambda c: _compare(c.get(member), op.text.lower(), literal)
        path = "/".join(parts)
        if not self.known_path(path):
            raise bad_request(
                "RequestBroker--ParseUri",
                f"Could not find a property named '{parts[0]}' on type '{self.type_name}'.",
            )
        return lambda c: _compare(c.get(path), op.text.lower(), literal)

    def _lambda(self, coll_path: list[str], kind: str) -> Predicate:
        coll = "/".join(coll_path)
        self._expect("(")
        var_tok = self._take()
        if var_tok.kind != "word":
            raise _filter_error()
        self._expect(":")
        body = self._or(var_tok.text)
        self._expect(")")
        if not self.known_path(coll):
            raise bad_request(
                "RequestBroker--ParseUri",
                f"Could not find a property named '{coll}' on type '{self.type_name}'.",
            )

        def pred(c: FilterContext) -> bool:
            items = c.collections.get(coll, [])
            results = (body(FilterContext(get=item.get)) for item in items)
            return any(results) if kind == "any" else all(results)

        return pred

    def _literal(self) -> Any:
        tok = self._take()
        if tok.kind == "str":
            return tok.text[1:-1].replace("''", "'")
        if tok.kind == "num":
            return float(tok.text) if "." in tok.text else int(tok.text)
        if tok.kind == "dt":
            return _parse_dt(tok.text)
        if tok.kind == "word" and tok.text.lower() in ("true", "false"):
            return tok.text.lower() == "true"
        if tok.kind == "word" and tok.text.lower() == "null":
            return None
        raise _filter_error()


def _parse_dt(text: str) -> datetime:
    t = text.replace("Z", "+00:00")
    if "." in t:  # Graph emits 7 fractional digits; fromisoformat wants at most 6
        head, _, tail = t.partition(".")
        digits = re.match(r"\d*", tail)
        frac = digits.group(0) if digits else ""
        t = f"{head}.{frac[:6].ljust(6, '0')}{tail[len(frac) :]}"
    dt = datetime.fromisoformat(t)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _compare(actual: Any, op: str, literal: Any) -> bool:
    if isinstance(literal, datetime) and isinstance(actual, str):
        try:
            actual = _parse_dt(actual)
        except ValueError:
            return False
    if op == "eq":
        return bool(actual == literal)
    if op == "ne":
        return bool(actual != literal)
    if actual is None or literal is None:
        return False
    try:
        if op == "gt":
            return bool(actual > literal)
        if op == "ge":
            return bool(actual >= literal)
        if op == "lt":
            return bool(actual < literal)
        return bool(actual <= literal)
    except TypeError:
        return False
