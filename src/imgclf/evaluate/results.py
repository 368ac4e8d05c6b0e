"""Results saved as JSON: a dataclass whose fields, in order, are the file's keys."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from imgclf.files import atomic_write

R = TypeVar("R", bound="Result")


class Result:
    """Base of the result dataclasses: to and from the JSON-ready dict that is written to disk."""

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready values, nested results included."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        """The result from its JSON form; keys it does not define (a later version's) are ignored."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        """Write the result as indented JSON, atomically."""
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n"))

    @classmethod
    def load(cls: type[R], path: Path) -> R:
        """Read a result written by save()."""
        return cls.from_json(json.loads(path.read_text()))
