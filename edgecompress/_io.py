"""Reading and writing the project's JSON files: one place for safe loading and atomic saving."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_json", "write_json_atomic"]


def read_json(path: str | os.PathLike[str], what: str, error: type[Exception]) -> Any:
    """Parse ``path``; a missing or malformed file raises ``error`` naming ``what`` it should have been."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{what} {path} is corrupt (not JSON): {exc}") from None


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")
    os.replace(tmp, path)
    return path
