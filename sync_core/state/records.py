"""Record <-> plain dict codec shared by every state backend (SQLite JSON, Table entities)."""

from __future__ import annotations

import dataclasses
import json
import typing
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(record: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Enum):
            value = value.value
        out[f.name] = value
    return out


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        target = args[0] if args and len(args) == 1 else hint
        if value is not None:
            if target is datetime:
                value = datetime.fromisoformat(value)
            elif isinstance(target, type) and issubclass(target, Enum):
                value = target(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def dumps(record: object) -> str:
    return json.dumps(to_dict(record), sort_keys=True)


def loads(cls: type[T], raw: str) -> T:
    return from_dict(cls, json.loads(raw))
