"""Quieting third-party chatter without touching the caller's logging set-up.

Some libraries log through the root logger's module functions
(``logging.warning(...)``: ONNX Runtime's quantizer advises pre-processing
once per operator), which also installs a stderr handler on the root logger
when it has none. :func:`quiet_library_logs` drops, for the duration of a
call, the root-logger records emitted from one library's files, and gives the
root logger a temporary ``NullHandler`` so that ``basicConfig`` does not
fire; both are removed afterwards, so the host process keeps its own levels,
handlers and records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_library_logs"]


@contextmanager
def quiet_library_logs(package: str, level: int = logging.ERROR) -> Iterator[None]:
    """Within the block, drop records below ``level`` logged from ``package``'s files or named loggers."""
    marker = f"{os.sep}{package}{os.sep}"

    def keep(record: logging.LogRecord) -> bool:
        ours = marker in record.pathname or record.name == package or record.name.startswith(package + ".")
        return not ours or record.levelno >= level

    root = logging.getLogger()
    named = logging.getLogger(package)
    guard = logging.NullHandler()
    root.addFilter(keep)
    named.addFilter(keep)
    root.addHandler(guard)
    try:
        yield
    finally:
        root.removeHandler(guard)
        named.removeFilter(keep)
        root.removeFilter(keep)
