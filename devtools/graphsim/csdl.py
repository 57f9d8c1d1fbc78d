"""Validate JSON payloads against the Microsoft Graph v1.0 CSDL (OData CSDL XML, OData JSON format).

The reference file is ``../shared/reference/graph-v1.0-calendar.csdl.xml`` beside the project root
(override with the environment variable ``GRAPH_CSDL_PATH``): an unchanged excerpt of
microsoftgraph/msgraph-metadata ``clean_v10_metadata/cleanMetadata.xml``.

What is checked (OData CSDL 4.0 + OData JSON Format 4.01):

* every property name is declared on the type or one of its ``BaseType`` ancestors
  (structural ``Property`` and, when expanded, ``NavigationProperty``);
* Edm primitive types (String, Boolean, Int16/32/64, Double, Decimal, DateTimeOffset, Date,
  TimeOfDay, Guid, Duration, Binary), enum members (``IsFlags`` enums: comma-separated members),
  ``Collection(...)`` values are arrays, nested complex and entity types recursively;
* ``Nullable="false"`` properties are not ``null``; collection values are never ``null``;
* ``@odata.type`` switches validation to the named type, which must derive from the expected one;
* instance annotations (keys starting with ``@``, e.g. ``@odata.etag``, ``@odata.nextLink``,
  ``@removed``) and property annotations (``name@odata.type``) are allowed; ``@removed`` must be
  ``{"reason": "changed"|"deleted"}`` (delta query overview).

``OpenType="true"`` allows undeclared (dynamic) properties. Graph declares ``event`` as open, but a
payload that relies on that is almost always a typo, so event types stay strict by default
(``strict_open``): an unknown property on an event is reported like on any closed type.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

_EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
DEFAULT_NAMESPACE = "microsoft.graph"
#: Open types that are validated as if closed (see module docstring).
DEFAULT_STRICT_OPEN: frozenset[str] = frozenset({"microsoft.graph.event"})


def default_csdl_path() -> Path:
    """``$GRAPH_CSDL_PATH`` or ``<project root>/../shared/reference/graph-v1.0-calendar.csdl.xml``."""
    env = os.environ.get("GRAPH_CSDL_PATH")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared/reference/graph-v1.0-calendar.csdl.xml"


@dataclass(frozen=True)
class PropertyDef:
    name: str
    type: str  # qualified element type: "Edm.String", "microsoft.graph.location"
    collection: bool
    nullable: bool
    navigation: bool = False


@dataclass
class StructuredType:
    name: str  # qualified
    kind: str  # "entity" | "complex"
    base: str | None
    abstract: bool
    open: bool
    own: dict[str, PropertyDef] = field(default_factory=dict)


@dataclass(frozen=True)
class EnumType:
    name: str
    members: frozenset[str]
    is_flags: bool


@dataclass(frozen=True)
class Issue:
    """One validation finding: a JSON path (``$.value[0].start.timeZone``) and what is wrong."""

    path: str
    message: str
    #: "unknown_property" for an undeclared property (``type_name`` is the type); "" otherwise
    kind: str = ""
    type_name: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class CsdlValidationError(AssertionError):
    """Raised by :meth:`Schema.check`; ``issues`` lists every finding."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


_DTO = re.compile(r"^-?\d{4,}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,12})?)?(Z|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TOD = re.compile(r"^\d{2}:\d{2}(:\d{2}(\.\d{1,12})?)?$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DURATION = re.compile(r"^-?P(\d+D)?(T(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")
_INT_RANGES = {
    "Edm.Byte": (0, 255),
    "Edm.SByte": (-128, 127),
    "Edm.Int16": (-(2**15), 2**15 - 1),
    "Edm.Int32": (-(2**31), 2**31 - 1),
    "Edm.Int64": (-(2**63), 2**63 - 1),
}
_REMOVED_REASONS = frozenset({"changed", "deleted"})


class Schema:
    """The types of one CSDL ``Schema`` element, with a validator for JSON values."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else default_csdl_path()
        root = ET.parse(self.path).getroot()
        schema = root if root.tag == f"{_EDM}Schema" else root.find(f".//{_EDM}Schema")
        if schema is None:
            raise ValueError(f"{self.path}: no edm:Schema element")
        self.namespace = schema.get("Namespace", DEFAULT_NAMESPACE)
        self.alias = schema.get("Alias") or "graph"
        self.structured: dict[str, StructuredType] = {}
        self.enums: dict[str, EnumType] = {}
        for el in schema:
            tag = el.tag.removeprefix(_EDM)
            if tag in ("EntityType", "ComplexType"):
                self._add_structured(el, "entity" if tag == "EntityType" else "complex")
            elif tag == "EnumType":
                name = self.qualify(el.get("Name", ""))
                members = frozenset(m.get("Name", "") for m in el.findall(f"{_EDM}Member"))
                self.enums[name] = EnumType(name, members, el.get("IsFlags") == "true")

    # -- model ---------------------------------------------------------------------------
    def qualify(self, name: str) -> str:
        """``graph.event`` / ``event`` / ``microsoft.graph.event`` -> ``microsoft.graph.event``."""
        name = name.lstrip("#")
        if name.startswith("Edm."):
            return name
        if name.startswith(self.alias + "."):
            return self.namespace + name[len(self.alias) :]
        if "." not in name:
            return f"{self.namespace}.{name}"
        return name

    def _add_structured(self, el: ET.Element, kind: str) -> None:
        name = self.qualify(el.get("Name", ""))
        base = el.get("BaseType")
        st = StructuredType(
            name=name,
            kind=kind,
            base=self.qualify(base) if base else None,
            abstract=el.get("Abstract") == "true",
            open=el.get("OpenType") == "true",
        )
        for child in el:
            ctag = child.tag.removeprefix(_EDM)
            if ctag not in ("Property", "NavigationProperty"):
                continue
            raw = child.get("Type", "Edm.String")
            collection = raw.startswith("Collection(")
            inner = raw[len("Collection(") : -1] if collection else raw
            pname = child.get("Name", "")
            st.own[pname] = PropertyDef(
                name=pname,
                type=self.qualify(inner),
                collection=collection,
                nullable=child.get("Nullable", "true") != "false",
                navigation=ctag == "NavigationProperty",
            )
        self.structured[name] = st

    def type_names(self) -> list[str]:
        return sorted([*self.structured, *self.enums])

    def properties(self, type_name: str) -> dict[str, PropertyDef]:
        """All properties of a structured type including inherited ones (base first)."""
        st = self.structured[self.qualify(type_name)]
        chain: list[StructuredType] = []
        cur: StructuredType | None = st
        while cur is not None:
            chain.append(cur)
            cur = self.structured.get(cur.base) if cur.base else None
        props: dict[str, PropertyDef] = {}
        for t in reversed(chain):
            props.update(t.own)
        return props

    def derives_from(self, type_name: str, base_name: str) -> bool:
        cur: str | None = self.qualify(type_name)
        base = self.qualify(base_name)
        while cur is not None:
            if cur == base:
                return True
            st = self.structured.get(cur)
            cur = st.base if st else None
        return False

    # -- validation ----------------------------------------------------------------------
    def validate(
        self,
        value: Any,
        type_name: str,
        *,
        path: str = "$",
        strict_open: Iterable[str] = DEFAULT_STRICT_OPEN,
    ) -> list[Issue]:
        """Issues found validating ``value`` as one instance of ``type_name`` (empty = valid)."""
        issues: list[Issue] = []
        self._value(value, self.qualify(type_name), path, issues, frozenset(strict_open), top=True)
        return issues

    def validate_collection(
        self,
        payload: Any,
        type_name: str,
        *,
        strict_open: Iterable[str] = DEFAULT_STRICT_OPEN,
    ) -> list[Issue]:
        """Validate a collection response: ``{"@odata.context", "value": [...], "@odata.nextLink"}``."""
        issues: list[Issue] = []
        if not isinstance(payload, Mapping):
            return [Issue("$", "a collection response must be a JSON object")]
        if "value" not in payload:
            issues.append(Issue("$", "a collection response needs a 'value' array"))
        for key, val in payload.items():
            if key == "value":
                if not isinstance(val, list):
                    issues.append(Issue("$.value", "must be an array"))
                    continue
                for i, item in enumerate(val):
                    issues.extend(self.validate(item, type_name, path=f"$.value[{i}]", strict_open=strict_open))
            elif key.startswith("@"):
                self._annotation(key, val, "$", issues)
            else:
                issues.append(Issue(f"$.{key}", "unexpected member in a collection response"))
        if "@odata.nextLink" in payload and "@odata.deltaLink" in payload:
            issues.append(Issue("$", "a page has either @odata.nextLink or @odata.deltaLink, not both"))
        return issues

    def check(self, value: Any, type_name: str, *, collection: bool = False) -> None:
        """Raise :class:`CsdlValidationError` unless ``value`` is valid."""
        issues = self.validate_collection(value, type_name) if collection else self.validate(value, type_name)
        if issues:
            raise CsdlValidationError(issues)

    def _value(
        self,
        value: Any,
        tname: str,
        path: str,
        issues: list[Issue],
        strict: frozenset[str],
        top: bool = False,
    ) -> None:
        if tname.startswith("Edm."):
            self._primitive(value, tname, path, issues)
        elif tname in self.enums:
            self._enum(value, self.enums[tname], path, issues)
        elif tname in self.structured:
            self._structured(value, tname, path, issues, strict)
        else:
            issues.append(Issue(path, f"type {tname} is not defined in {self.path.name}"))

    def _primitive(self, value: Any, tname: str, path: str, issues: list[Issue]) -> None:
        def bad(expected: str) -> None:
            issues.append(Issue(path, f"expected {tname} ({expected}), got {value!r}"))

        if tname in _INT_RANGES:
            lo, hi = _INT_RANGES[tname]
            if not isinstance(value, int) or isinstance(value, bool):
                bad("integer")
            elif not lo <= value <= hi:
                bad(f"integer in {lo}..{hi}")
        elif tname in ("Edm.Double", "Edm.Single", "Edm.Decimal"):
            ok_num = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok_num and value not in ("NaN", "INF", "-INF"):
                bad("number")
        elif tname == "Edm.Boolean":
            if not isinstance(value, bool):
                bad("true/false")
        elif not isinstance(value, str):
            bad("string")
        elif tname == "Edm.DateTimeOffset":
            if not _DTO.match(value):
                bad("ISO 8601 timestamp with Z or offset")
        elif tname == "Edm.Date":
            if not _DATE.match(value) or not _valid_date(value):
                bad("YYYY-MM-DD")
        elif tname == "Edm.TimeOfDay":
            if not _TOD.match(value):
                bad("hh:mm:ss")
        elif tname == "Edm.Guid":
            if not _GUID.match(value):
                bad("GUID")
        elif tname == "Edm.Duration":
            if not _DURATION.match(value):
                bad("ISO 8601 duration")
        elif tname == "Edm.Binary":
            try:
                base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=False)
            except (binascii.Error, ValueError):
                bad("base64")

    def _enum(self, value: Any, enum: EnumType, path: str, issues: list[Issue]) -> None:
        if not isinstance(value, str):
            issues.append(Issue(path, f"expected a member name of {enum.name}, got {value!r}"))
            return
        names = [v.strip() for v in value.split(",")] if enum.is_flags else [value]
        for n in names:
            if n not in enum.members:
                issues.append(Issue(path, f"'{n}' is not a member of {enum.name} ({', '.join(sorted(enum.members))})"))

    def _structured(self, value: Any, tname: str, path: str, issues: list[Issue], strict: frozenset[str]) -> None:
        if not isinstance(value, Mapping):
            issues.append(Issue(path, f"expected a JSON object for {tname}, got {type(value).__name__}"))
            return
        odata_type = value.get("@odata.type")
        if isinstance(odata_type, str):
            declared = self.qualify(odata_type)
            if declared not in self.structured:
                issues.append(Issue(f"{path}.@odata.type", f"unknown type {odata_type!r}"))
            elif not self.derives_from(declared, tname):
                issues.append(Issue(f"{path}.@odata.type", f"{declared} does not derive from {tname}"))
            else:
                tname = declared
        st = self.structured[tname]
        props = self.properties(tname)
        is_open = st.open and tname not in strict
        for key, val in value.items():
            kpath = f"{path}.{key}"
            if key.startswith("@"):
                self._annotation(key, val, path, issues)
                continue
            if "@" in key:  # property annotation: name@odata.nextLink, name@odata.type ...
                prop_name = key.split("@", 1)[0]
                if prop_name not in props and not is_open:
                    issues.append(Issue(kpath, f"annotation of undeclared property '{prop_name}' on {tname}"))
                continue
            pdef = props.get(key)
            if pdef is None:
                if not is_open:
                    issues.append(Issue(kpath, f"'{key}' is not a property of {tname}", "unknown_property", tname))
                continue
            self._property(val, pdef, kpath, issues, strict)

    def _property(self, val: Any, pdef: PropertyDef, path: str, issues: list[Issue], strict: frozenset[str]) -> None:
        if pdef.collection:
            if not isinstance(val, list):
                issues.append(Issue(path, f"expected an array (Collection({pdef.type})), got {val!r}"))
                return
            for i, item in enumerate(val):
                ipath = f"{path}[{i}]"
                if item is None:
                    if not pdef.nullable:
                        issues.append(Issue(ipath, "null item in a collection of non-nullable values"))
                    continue
                self._value(item, pdef.type, ipath, issues, strict)
            return
        if val is None:
            if not pdef.nullable:
                issues.append(Issue(path, f"must not be null (Nullable=false, {pdef.type})"))
            return
        self._value(val, pdef.type, path, issues, strict)

    def _annotation(self, key: str, val: Any, path: str, issues: list[Issue]) -> None:
        kpath = f"{path}.{key}"
        if key == "@removed":
            if not isinstance(val, Mapping) or val.get("reason") not in _REMOVED_REASONS:
                issues.append(Issue(kpath, 'must be {"reason": "changed"|"deleted"}'))
            elif set(val) - {"reason"}:
                issues.append(Issue(kpath, f"unexpected members {sorted(set(val) - {'reason'})}"))
        elif key in ("@odata.count",):
            if not isinstance(val, int) or isinstance(val, bool):
                issues.append(Issue(kpath, "must be an integer"))
        elif key.startswith("@odata."):
            if not isinstance(val, str):
                issues.append(Issue(kpath, "must be a string"))
            elif key == "@odata.type" and not val.startswith("#"):
                issues.append(Issue(kpath, "must start with '#'"))
        elif "." not in key[1:]:
            issues.append(Issue(kpath, "custom instance annotations must be namespace-qualified"))


def _valid_date(value: str) -> bool:
    try:
        y, m, d = (int(p) for p in value.split("-"))
        date(y, m, d)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=4)
def _load(path: str) -> Schema:
    return Schema(path)


def load_schema(path: Path | str | None = None) -> Schema:
    """The parsed CSDL at ``path`` (default: :func:`default_csdl_path`), cached per path."""
    return _load(str(Path(path) if path is not None else default_csdl_path()))
