"""The compact students of the zoo: they build, their sizes order as ``students_for`` says, and the models that
existed before them (and their checkpoints) are unchanged."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch

from edgecompress.analysis import removable_blocks
from edgecompress.models import create_model, list_models, model_descriptions, students_for
from edgecompress.models.small import BasicBlock, CifarResNet

# Parameter counts at 28x28, 1 channel, 10 classes.
STUDENT_PARAMS = {
    "resnet8": 77_754,
    "resnet14": 174_970,
    "resnet8-0.5": 19_810,
    "resnet14-0.5": 44_226,
    "resnet20-0.5": 68_642,
    "mobilenetv2-0.25": 250_778,
    "vgg11-small-0.5": 578_810,
}

# The state_dicts of the models registered before the students, computed from the code before they were added
# (commit 21a7c60): (number of entries, elements in all of them, sha256 of "key:shape;..." in order), at
# (10 classes, 1 channel) and (100 classes, 3 channels). Checkpoints saved then must load now.
STATE_DICTS = {
    ("lenet5", 10, 1): (10, 61_706, "16454672f0c79575"),
    ("lenet5", 100, 3): (10, 69_656, "917e8ca57d779ac8"),
    ("mobilenetv2", 10, 1): (314, 2_270_270, "ec618ff55ee9206a"),
    ("mobilenetv2", 100, 3): (314, 2_386_136, "28f8cbee1ec55de7"),
    ("mobilenetv2-0.5", 10, 1): (314, 718_798, "19100c695947ad5b"),
    ("mobilenetv2-0.5", 100, 3): (314, 834_376, "9dfcceea28af2cbf"),
    ("resnet20", 10, 1): (128, 273_775, "2e6ee0758222d579"),
    ("resnet20", 100, 3): (128, 279_913, "dc71906fb4d02465"),
    ("resnet56", 10, 1): (344, 859_795, "18ff9752ede5d5bc"),
    ("resnet56", 100, 3): (344, 865_933, "d83811569a0f7844"),
    ("vgg11-small", 10, 1): (50, 2_312_370, "3b0b08ac698416a3"),
    ("vgg11-small", 100, 3): (50, 2_336_076, "6156ee863b9c02c4"),
}


def _params(name: str) -> int:
    return sum(p.numel() for p in create_model(name).parameters())


@pytest.mark.parametrize("name", sorted(STUDENT_PARAMS))
def test_students_build_and_run(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1)
    assert sum(p.numel() for p in model.parameters()) == STUDENT_PARAMS[name]
    out = model.eval()(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert name in list_models()


@pytest.mark.parametrize("key", sorted(STATE_DICTS), ids=lambda k: f"{k[0]}-{k[1]}-{k[2]}")
def test_existing_architectures_are_unchanged(key: tuple[str, int, int]) -> None:
    name, num_classes, in_channels = key
    state = create_model(name, num_classes, in_channels).state_dict()
    signature = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    digest = hashlib.sha256(signature.encode()).hexdigest()[:16]
    assert (len(state), sum(v.numel() for v in state.values()), digest) == STATE_DICTS[key]


def test_every_description_states_its_parameter_count() -> None:
    for name, description in model_descriptions().items():
        match = re.search(r"([0-9.]+)([kM]) params", description)
        assert match, f"{name}: no parameter count in {description!r}"
        shown, unit = match.group(1), match.group(2)
        decimals = len(shown.partition(".")[2])
        actual = _params(name) / (1e3 if unit == "k" else 1e6)
        assert round(actual, decimals) == float(shown), f"{name}: {description!r}, actually {_params(name)}"


def test_students_for_a_resnet_smallest_first() -> None:
    students = students_for("resnet20")
    assert students == ["resnet8-0.5", "resnet14-0.5", "resnet20-0.5", "resnet8", "resnet14"]
    sizes = [_params(n) for n in students]
    assert sizes == sorted(set(sizes))  # strictly increasing
    assert sizes[-1] < _params("resnet20")
    assert students_for("resnet56") == [*students, "resnet20"]
    assert students_for("resnet8") == ["resnet8-0.5", "resnet14-0.5", "resnet20-0.5"]


@pytest.mark.parametrize("name", ["resnet56", "mobilenetv2", "mobilenetv2-0.5", "vgg11-small", "resnet14"])
def test_students_are_strictly_smaller_and_ordered(name: str) -> None:
    students = students_for(name)
    assert students
    sizes = [_params(n) for n in students]
    assert all(a < b for a, b in zip(sizes, [*sizes[1:], _params(name)], strict=True))


def test_students_of_other_families() -> None:
    assert students_for("mobilenetv2") == ["mobilenetv2-0.25", "mobilenetv2-0.5"]
    assert students_for("vgg11-small") == ["vgg11-small-0.5"]
    for smallest in ("resnet8-0.5", "mobilenetv2-0.25", "vgg11-small-0.5", "lenet5"):
        assert students_for(smallest) == []


@pytest.mark.parametrize("name", ["torchvision:resnet18", "my_models:tiny", "resnet2O", ""])
def test_unknown_families_have_no_students(name: str) -> None:
    assert students_for(name) == []


@pytest.mark.parametrize(
    ("width", "channels"),
    [
        (1.0, [16, 32, 64]),
        (0.5, [8, 16, 32]),
        (0.3, [4, 8, 20]),
        (0.625, [12, 20, 40]),
        (0.1, [4, 4, 8]),
        (0.01, [4, 4, 4]),
    ],
)
def test_resnet_width_rounds_to_multiples_of_four(width: float, channels: list[int]) -> None:
    model = CifarResNet(8, 10, 1, width=width)
    assert [b.conv1.out_channels for b in model.layers if isinstance(b, BasicBlock)] == channels
    assert model.fc.in_features == channels[-1]
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_narrow_resnets_keep_their_removable_blocks() -> None:
    # Blocks with an identity shortcut are removable; the first block of stages 2 and 3 projects.
    assert set(removable_blocks(create_model("resnet8-0.5"))) == {"layers.0"}
    assert set(removable_blocks(create_model("resnet14-0.5"))) == {"layers.0", "layers.1", "layers.3", "layers.5"}
