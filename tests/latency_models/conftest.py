from __future__ import annotations

import pytest

from edgecompress.errors import EdgeCompressError
from edgecompress.latency_models.device_model import load_nb201_rows


@pytest.fixture(scope="session")
def nb201_rows():
    """The public measurements from ../shared/latency-data; tests needing them skip when it is absent."""
    try:
        return load_nb201_rows()
    except EdgeCompressError as exc:
        pytest.skip(str(exc))
