"""Loading a file never runs code; hostile input is refused quickly and rendered verbatim (issue 23, security)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edgecompress._progress import make_console
from edgecompress.artifacts.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from edgecompress.config import load_config
from edgecompress.errors import CheckpointError, ConfigError
from edgecompress.models import create_model
from edgecompress.workflows.search import run_search

EVIL = """
from pathlib import Path
import torch.nn as nn
Path(__file__).with_name("RAN").write_text("the factory module ran")
def build(num_classes=10, in_channels=1, input_size=28):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, num_classes))
"""


@pytest.fixture
def evil_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkpoint passing weights_only=True whose spec names a factory in a module of the working folder."""
    (tmp_path / "evilmod.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    spec = ModelSpec("evilmod:build", 10, 1, 28, "fashion-mnist", 0)
    return save_checkpoint(tmp_path / "evil.pt", model, spec)


def test_a_factory_named_in_a_checkpoint_is_not_imported(evil_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match=r"names the model factory 'evilmod:build'.*pass --model evilmod:build"):
        load_checkpoint(evil_checkpoint)
    assert not (evil_checkpoint.parent / "RAN").exists()
    with pytest.raises(CheckpointError, match="you named 'other:build'"):
        load_checkpoint(evil_checkpoint, trust_factory="other:build")
    assert not (evil_checkpoint.parent / "RAN").exists()
    _, spec = load_checkpoint(evil_checkpoint, trust_factory="evilmod:build")  # the user chose it
    assert spec.model == "evilmod:build" and (evil_checkpoint.parent / "RAN").exists()


def test_the_cli_refuses_it_in_one_line(evil_checkpoint: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "edgecompress", "analyze", "--checkpoint", str(evil_checkpoint)],
        capture_output=True, text=True, cwd=evil_checkpoint.parent,
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "names the model factory 'evilmod:build'" in run.stderr
    assert not (evil_checkpoint.parent / "RAN").exists()


def test_registry_and_torchvision_names_need_no_trust(tmp_path: Path) -> None:
    spec = ModelSpec("lenet5", 10, 1, 28, "fashion-mnist", 0)
    path = save_checkpoint(tmp_path / "l.pt", create_model("lenet5"), spec)
    assert load_checkpoint(path)[1].model == "lenet5"


def test_a_yaml_alias_bomb_is_refused_within_a_memory_bound(tmp_path: Path) -> None:
    levels = ["a: &a [" + ", ".join(['"x"'] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")  # 9^9 values when expanded
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\n")
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: the bomb took 1.85 GB and grew
        from edgecompress.config import load_config
        from edgecompress.errors import ConfigError
        try:
            load_config({str(tmp_path / "bomb.yaml")!r})
        except ConfigError as exc:
            print(exc)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "expands to more than 100,000 values (YAML aliases repeating each other?)" in run.stdout


def test_error_messages_show_bad_values_bounded() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"search.agent": list(range(10_000))})
    assert len(str(err.value)) < 400 and "search.agent = [0, 1, 2, 3, 4, 5, ...]" in str(err.value)


def test_user_text_is_not_rich_markup(tmp_path: Path) -> None:
    odd = tmp_path / "x[/x]" / "[bold]p.json"
    run = subprocess.run([sys.executable, "-m", "edgecompress", "replay", "--policy", str(odd), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"policy file {odd} does not exist" in run.stderr.replace("\n", "")


class _Marker:
    """Unpickling this writes a file: what a crafted replay_buffer.pkl could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (Path(self.path), "unpickled"))


def _crafted_sb3_zip(path: Path, marker: Path) -> Path:
    """An SB3 agent zip whose ``data`` holds, base64-encoded, a pickle that writes ``marker`` when loaded (SB3's
    load cloudpickle-loads every ``:serialized:`` entry of it)."""
    import base64
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        payload = base64.b64encode(pickle.dumps(_Marker(str(marker)))).decode()
        z.writestr("data", json.dumps({"policy_class": {":type:": "x", ":serialized:": payload}}))
        z.writestr("_stable_baselines3_version", "2.9.2")
    return path


def test_a_crafted_sb3_agent_zip_would_run_code_if_sb3_loaded_it(tmp_path: Path) -> None:
    """The premise of the next test: SB3's own loader executes such a file (so edgecompress must never use it)."""
    from stable_baselines3.common.save_util import load_from_zip_file

    load_from_zip_file(_crafted_sb3_zip(tmp_path / "agent.zip", tmp_path / "RAN"))
    assert (tmp_path / "RAN").read_text() == "unpickled"


@pytest.mark.parametrize("craft", ["pickle", "npz with an object array", "legacy files"])
def test_a_ddpg_run_folder_is_resumed_without_unpickling(
    craft: str, tmp_path: Path, lenet_checkpoint: Path, tiny_fmnist_shared: Path
) -> None:
    """A crafted agent state (a pickle with __reduce__, an .npz whose arrays are pickled objects) and the files
    older versions read with pickle (SB3's agent.zip, replay_buffer.pkl) are never executed: the search says so
    and goes on with a fresh agent after the logged episodes."""
    import numpy as np

    overrides = {
        "out": str(tmp_path / "run"), "model.checkpoint": str(lenet_checkpoint),
        "data.data_dir": str(tiny_fmnist_shared), "data.val_size": 60, "data.val_samples": 60,
        "search.episodes": 2, "search.warmup_episodes": 1, "search.budget_ratio": 0.9,
        "search.finetune_batches": 0,  # scored unfine-tuned: resuming is what is tested
    }  # fmt: skip
    run_search(load_config(None, overrides), make_console(), progress=False)
    run, marker = tmp_path / "run", tmp_path / "RAN"
    assert (run / "agent_state.npz").is_file() and not list(run.glob("*.tmp"))
    state = run / "agent_state.npz"
    if craft == "pickle":
        state.write_bytes(pickle.dumps(_Marker(str(marker))))
    elif craft == "npz with an object array":
        with state.open("wb") as f:
            np.savez(f, state=np.array([_Marker(str(marker))], dtype=object))
    else:
        state.unlink()
        _crafted_sb3_zip(run / "agent.zip", marker)
        (run / "replay_buffer.pkl").write_bytes(pickle.dumps(_Marker(str(marker))))
    console = make_console()
    with console.capture() as captured:
        result = run_search(load_config(None, {**overrides, "search.episodes": 3}), console, progress=False)
    said = " ".join(captured.get().split())
    assert not marker.exists()
    if craft == "legacy files":
        assert "holds agent.zip, replay_buffer.pkl from an older edgecompress; they are not read" in said
    else:
        assert f"cannot resume the agent from {state}: not a saved agent state" in said
    assert "2 episodes logged without an agent state to resume; a fresh agent" in said
    assert result["episodes"] == 3 and len((run / "episodes.jsonl").read_text().splitlines()) == 3  # log kept
    assert json.loads((run / "best_policy.json").read_text())["format"] == "edgecompress.policy"


def test_a_pickled_module_is_refused_with_what_is_accepted(tmp_path: Path) -> None:
    torch.save(create_model("lenet5"), tmp_path / "whole.pt")  # a full pickled nn.Module
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "whole.pt")
    msg = str(err.value)
    assert "unpickling those can run code" in msg and "torch.save(model.state_dict(), path)" in msg
    assert "weights_only=False" not in msg
