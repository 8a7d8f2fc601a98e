"""The lazy optional-dependency helper and the version record."""

from __future__ import annotations

import pytest

from edgecompress._imports import optional
from edgecompress.errors import EdgeCompressError
from edgecompress.version import __version__, software_versions


def test_optional_imports_or_names_the_package_to_install() -> None:
    assert optional("json", needed_for="nothing").dumps([1]) == "[1]"
    with pytest.raises(EdgeCompressError, match=r"search.agent ray needs the package 'ray\[tune\]'.*pip install"):
        optional("ray.not_a_module_of_ray", needed_for="search.agent ray")


def test_software_versions_names_what_produced_a_number() -> None:
    v = software_versions()
    assert v["edgecompress"] == __version__ and {"torch", "torchvision", "onnxruntime", "python"} <= set(v)
