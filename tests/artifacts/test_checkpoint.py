"""Base checkpoints: a state_dict and a JSON spec, loadable with weights_only=True."""

from __future__ import annotations

import pytest
import torch

from edgecompress.artifacts.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from edgecompress.errors import CheckpointError
from edgecompress.models import create_model


def _spec() -> ModelSpec:
    return ModelSpec(model="resnet20", num_classes=10, in_channels=1, input_size=28, dataset="fashion-mnist", seed=0)


def test_checkpoint_round_trip_weights_only(tmp_path) -> None:
    torch.manual_seed(1)
    model = create_model("resnet20")
    (tmp_path / "m.pt.tmp").write_text("the user's own file")  # the temporary name is never one of theirs
    path = save_checkpoint(tmp_path / "m.pt", model, _spec())
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "edgecompress.checkpoint" and isinstance(raw["spec"], str)
    loaded, spec = load_checkpoint(path)
    assert spec.model == "resnet20" and spec.input_shape == (1, 1, 28, 28)
    assert "torch" in spec.versions
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model.eval()(x), loaded(x))
    assert (tmp_path / "m.pt.tmp").read_text() == "the user's own file"
    assert [p.name for p in tmp_path.glob("*.tmp")] == ["m.pt.tmp"]  # and none of the tool's left behind


def test_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="is not an edgecompress checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    path = save_checkpoint(tmp_path / "m.pt", create_model("lenet5"), _spec())  # spec says resnet20
    with pytest.raises(CheckpointError, match="weights do not fit model 'resnet20'"):
        load_checkpoint(path)
