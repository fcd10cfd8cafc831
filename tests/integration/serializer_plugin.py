"""A serializer plugin for the tests: JSON where datetimes travel as {"$dt": "<ISO 8601>"} and
come back as datetimes. Registered in the test process by the tests (not an entry point)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pgflow.hooks import RegisterSerializer, hookimpl

NAME = "tagged-datetimes"


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    raise TypeError(f"{type(value).__name__} has no JSON form here")


def _hook(obj: dict[str, Any]) -> Any:
    if set(obj) == {"$dt"}:
        return datetime.fromisoformat(obj["$dt"])
    return obj


class TaggedDatetimes:
    def encode(self, value: Any) -> bytes:
        return json.dumps(value, default=_default).encode()

    def decode(self, data: bytes | str) -> Any:
        return json.loads(data, object_hook=_hook)


@hookimpl
def pgflow_register_serializers(register: RegisterSerializer) -> None:
    register(NAME, TaggedDatetimes())
