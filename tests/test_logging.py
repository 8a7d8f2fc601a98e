"""quiet_library_logs drops one library's chatter for a call and leaves the host's logging as it was."""

from __future__ import annotations

import logging

from edgecompress._logging import quiet_library_logs


def _record(path: str, level: int = logging.WARNING, name: str = "root") -> logging.LogRecord:
    return logging.LogRecord(name, level, path, 1, "advice", None, None)


def test_drops_the_librarys_warnings_only_inside_the_block() -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers), list(root.filters))
    with quiet_library_logs("onnxruntime"):
        assert not root.filter(_record("/site-packages/onnxruntime/quantization/quantize.py"))
        assert root.filter(_record("/site-packages/onnxruntime/quantization/quantize.py", logging.ERROR))
        assert root.filter(_record("/home/me/notebook.py"))
        assert root.handlers  # a temporary NullHandler: logging.warning() cannot call basicConfig here
    assert (root.level, list(root.handlers), list(root.filters)) == before
    assert root.filter(_record("/site-packages/onnxruntime/quantization/quantize.py"))
