from __future__ import annotations

import importlib

import pytest

import edgecompress

SUBPACKAGES = [
    "envs", "agents", "compressors", "search", "latency_models", "models", "training", "artifacts", "drivers",
    "workflows",
]  # fmt: skip


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_document_their_role(name: str) -> None:
    mod = importlib.import_module(f"edgecompress.{name}")
    assert mod.__doc__ and len(mod.__doc__.strip()) > 40


def test_top_level_api() -> None:
    assert edgecompress.__version__ == "0.2.0"
    assert "lenet5" in edgecompress.list_models()
    assert set(edgecompress.__all__) >= {"create_model", "list_models"}


def test_importing_the_package_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = "import sys, edgecompress, edgecompress.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
