"""`--help` of every command says what each option does and what it defaults to; every entry point defaults to
the config's values (issue 22: a search from flags alone used to score every policy near chance).

Walks the click command tree typer builds, in process (no subprocess per command)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.core import TyperOption
from typer.testing import CliRunner

from edgecompress.cli import CONFIG_DEFAULTS, _default, app
from edgecompress.config import RunConfig


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))
OPTIONS = [
    (" ".join(("edgecompress", *path)), opt)
    for path, cmd in COMMANDS
    for opt in cmd.params
    if isinstance(opt, TyperOption) and opt.name != "help"
]


def _config_value(key: str) -> Any:
    node: Any = RunConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def test_the_tree_is_walked() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"search", "train", "replay", "export", "data locate", "latency validate-table"} <= names
    assert len(OPTIONS) > 100


def test_every_option_has_a_line_of_help() -> None:
    missing = [f"{where} {opt.opts[0]}" for where, opt in OPTIONS if not (opt.help or "").strip()]
    assert not missing, f"options without help: {missing}"
    multiline = [f"{where} {opt.opts[0]}" for where, opt in OPTIONS if "\n" in (opt.help or "")]
    assert not multiline, f"help of more than one line: {multiline}"


def test_every_default_is_shown() -> None:
    """A set default is printed by typer ([default: X]); a None one ("from the config", "none") must be said."""
    hidden = [f"{where} {opt.opts[0]}" for where, opt in OPTIONS if opt.show_default is False]
    assert not hidden, f"options hiding their default: {hidden}"
    unsaid = [
        f"{where} {opt.opts[0]}: {opt.help!r}"
        for where, opt in OPTIONS
        if opt.default is None and not opt.required and "default" not in (opt.help or "").lower()
    ]
    assert not unsaid, f"options defaulting to None whose help does not say the effective default: {unsaid}"


@pytest.mark.parametrize("key", sorted(CONFIG_DEFAULTS))
def test_stated_config_defaults_are_the_configs(key: str) -> None:
    """The literals --help states (kept so `--help` imports no pydantic) cannot drift from edgecompress.config."""
    assert CONFIG_DEFAULTS[key] == _config_value(key)


def test_help_quoting_the_config_names_a_checked_key() -> None:
    pattern = re.compile(r"\(default: ([\w.]+) from --config, else [^);]*")
    quoted = [(where, opt, m) for where, opt in OPTIONS for m in pattern.finditer(opt.help or "")]
    assert len(quoted) > 20
    for where, opt, m in quoted:
        assert m.group(1) in CONFIG_DEFAULTS, f"{where} {opt.opts[0]} quotes unchecked key {m.group(1)}"
        assert f"{m.group(0)})" == _default(m.group(1)), f"{where} {opt.opts[0]}: {opt.help!r}"


def test_search_help_states_the_scoring_defaults() -> None:
    search = dict(_commands(typer.main.get_command(app)))[("search",)]
    helps = {opt.opts[0]: opt.help for opt in search.params if isinstance(opt, TyperOption)}
    for flag, key in (("--finetune-batches", "search.finetune_batches"), ("--bn-batches", "search.bn_batches"),
                      ("--finetune-lr", "search.finetune_lr"), ("--val-samples", "data.val_samples")):  # fmt: skip
        assert helps[flag].endswith(f"else {_config_value(key)}).")


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=lambda p: " ".join(p) or "edgecompress")
def test_help_renders(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="edgecompress", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage: edgecompress" in result.output


def test_python_search_defaults_are_the_configs() -> None:
    from edgecompress.workflows.api import search_policy

    params = inspect.signature(search_policy).parameters
    for name, key in (("device", "device"), ("budget_ratio", "search.budget_ratio"),
                      ("val_samples", "data.val_samples"), ("bn_batches", "search.bn_batches"),
                      ("finetune_lr", "search.finetune_lr"), ("seed", "search.seed"),
                      ("accelerator", "train.accelerator"), ("precision", "train.precision")):  # fmt: skip
        assert params[name].default == _config_value(key), name
    assert tuple(params["techniques"].default) == tuple(_config_value("search.techniques"))
    # None: the config's search.finetune_batches when there is training data to distil on, else 0
    assert params["finetune_batches"].default is None


def test_search_scores_with_batchnorm_reestimation_and_finetuning_by_default() -> None:
    search = RunConfig().search
    assert search.bn_batches > 0 and search.finetune_batches > 0


def test_python_search_distils_only_when_it_has_training_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """search_policy(evaluate=...) without training data still runs (nothing to distil on: 0 steps); with
    ``train_data`` it distils for the config's number of steps."""
    import torch
    import yaml

    import edgecompress
    from tests.test_inputs import TwoInputs

    torch.manual_seed(0)
    model = TwoInputs().eval()
    example = (torch.zeros(1, 3, 16, 16), torch.zeros(1, 8))
    batches = [((torch.randn(8, 3, 16, 16), torch.randn(8, 8)), torch.randint(0, 5, (8,))) for _ in range(2)]
    for name, train_data in (("no-train", None), ("train", batches)):
        edgecompress.search_policy(
            model, evaluate=lambda m: 1.0, example_inputs=example, train_data=train_data, budget_ratio=0.9,
            agent="random", episodes=1, out=tmp_path / name,
        )  # fmt: skip
        search = yaml.safe_load((tmp_path / name / "config.yaml").read_text())["search"]
        assert search["bn_batches"] == _config_value("search.bn_batches")
        expected = 0 if train_data is None else _config_value("search.finetune_batches")
        assert search["finetune_batches"] == expected, name
