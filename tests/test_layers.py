"""The package's shape: imports only go downward (the import-linter contract), and starting is cheap."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgecompress"
HEAVY = ("torch", "torchvision", "ray", "optuna", "stable_baselines3", "onnxruntime", "torch_pruning", "matplotlib")


def test_import_linter_layers_contract_is_kept() -> None:
    pytest.importorskip("importlinter")
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(PACKAGE.parent / "pyproject.toml"), no_cache=True) == 0


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return set(out.split())


def test_importing_the_package_and_the_cli_imports_no_heavy_library() -> None:
    loaded = _loaded_after("import edgecompress, edgecompress.cli, edgecompress.errors, edgecompress.config")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_help_imports_no_heavy_library() -> None:
    loaded = _loaded_after(
        "from edgecompress.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_public_names_load_on_first_use() -> None:
    loaded = _loaded_after("import edgecompress\nedgecompress.compress")
    assert "torch" in loaded and "edgecompress.compressors" in loaded


def test_internal_imports_are_module_level_outside_the_cli() -> None:
    """Function-level imports of edgecompress modules hide the dependency graph (and once hid a cycle); only
    the CLI defers them, so that --help does not import torch."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "cli" or path.name == "profiler.py":
            continue
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in tree.body:  # `if TYPE_CHECKING:` imports are for the type checker only
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                top |= {id(n) for n in node.body}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and id(node) not in top
                and (node.module or "").startswith("edgecompress")
            ):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert offenders == []


def test_the_copy_to_device_profiler_imports_nothing_from_edgecompress() -> None:
    tree = ast.parse((PACKAGE / "latency_models" / "profiler.py").read_text())
    names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [n for n in names if n.startswith("edgecompress")]
