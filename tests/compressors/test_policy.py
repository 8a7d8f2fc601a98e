from __future__ import annotations

import json

import pytest

from edgecompress import LayerPolicy, Policy
from edgecompress.errors import PolicyError
from edgecompress.models import create_model


def test_defaults_mean_unchanged() -> None:
    lp = LayerPolicy()
    assert (lp.keep, lp.rank, lp.sparsity, lp.wbits, lp.clusters, lp.abits) == (1.0, 1.0, 0.0, 32, 0, 32)
    assert lp.is_identity and lp.to_dict() == {}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"keep": 0}, "keep = 0 is invalid; valid: 0 < keep <= 1"),
        ({"keep": 1.5}, "keep = 1.5 is invalid; valid: 0 < keep <= 1"),
        ({"rank": 0.0}, "rank = 0.0 is invalid; valid: 0 < rank <= 1"),
        ({"sparsity": 1.0}, "sparsity = 1.0 is invalid; valid: 0 <= sparsity < 1"),
        ({"wbits": 3}, "wbits = 3 is invalid; valid: 32, 16, 8, 6, 4, 2"),
        ({"clusters": 1}, "clusters = 1 is invalid; valid: 0 (off) or 2..256"),
        ({"clusters": 300}, "clusters = 300 is invalid; valid: 0 (off) or 2..256"),
        ({"abits": 4}, "abits = 4 is invalid; valid: 32, 16, 8"),
        ({"wbits": 8.0}, "wbits = 8.0 is invalid; valid: an integer"),
        ({"keep": "half"}, "keep = 'half' is invalid; valid: a number"),
    ],
)
def test_bad_fields(fields, message) -> None:
    with pytest.raises(PolicyError) as err:
        LayerPolicy(**fields)
    assert str(err.value) == message


def test_json_round_trip(tmp_path) -> None:
    model = create_model("lenet5")
    policy = Policy.uniform(model, base={"model": "lenet5", "input_shape": [1, 1, 28, 28]}, keep=0.5, wbits=4)
    policy = policy.with_layer("fc3", keep=1.0, clusters=8)
    policy.meta["accuracy"] = 0.87
    path = policy.save(tmp_path / "p.json")
    loaded = Policy.load(path, model)
    assert loaded == policy
    assert json.loads(path.read_text())["layers"]["fc3"] == {"wbits": 4, "clusters": 8}
    assert loaded.get("not-listed") == LayerPolicy()


def _write(tmp_path, layers, **top):
    doc = {"format": "edgecompress.policy", "version": 1, "base": {}, "layers": layers, **top}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    return path


def test_load_names_layer_field_value_and_range(tmp_path) -> None:
    path = _write(tmp_path, {"conv2": {"sparsity": 1.2}})
    with pytest.raises(PolicyError) as err:
        Policy.load(path)
    assert str(err.value) == "layer 'conv2': sparsity = 1.2 is invalid; valid: 0 <= sparsity < 1"


def test_load_unknown_field(tmp_path) -> None:
    path = _write(tmp_path, {"conv2": {"sparsty": 0.5}})
    with pytest.raises(PolicyError, match="layer 'conv2': unknown field 'sparsty'. Did you mean 'sparsity'?"):
        Policy.load(path)


def test_load_unknown_layer_suggests(tmp_path) -> None:
    path = _write(tmp_path, {"conv3": {"keep": 0.5}})
    with pytest.raises(PolicyError) as err:
        Policy.load(path, create_model("lenet5"))
    assert "policy names layer 'conv3', which the model does not have. Did you mean 'conv2'?" in str(err.value)
    assert "Compressible layers: conv1, conv2, fc1, fc2, fc3" in str(err.value)


def test_load_bad_files(tmp_path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        Policy.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PolicyError, match="is corrupt \\(not JSON\\)"):
        Policy.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"layers": {}}')
    with pytest.raises(PolicyError, match="is not an edgecompress policy"):
        Policy.load(tmp_path / "other.json")
    path = _write(tmp_path, {}, version=99)
    path = path.rename(tmp_path / "v99.json")
    text = path.read_text().replace('"version": 1, ', "")
    path.write_text(text)
    with pytest.raises(PolicyError, match="has policy schema version 99; this edgecompress reads versions 1, 2"):
        Policy.load(path)


def test_uniform_covers_every_compressible_layer() -> None:
    policy = Policy.uniform(create_model("resnet20"), keep=0.5, exclude=["fc"])
    assert len(policy.layers) == 21 and "fc" not in policy.layers
    assert all(lp.keep == 0.5 for lp in policy.layers.values())
    with pytest.raises(PolicyError, match="layer '<uniform>': unknown field 'kep'"):
        Policy.uniform(create_model("lenet5"), kep=0.5)
