from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgecompress.config import RunConfig, load_config, write_resolved_config
from edgecompress.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    cfg = load_config()
    assert cfg.model.name == "lenet5" and cfg.data.dataset == "fashion-mnist" and cfg.train.epochs == 3


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    assert isinstance(load_config(path), RunConfig)


def test_overrides_beat_file_and_none_is_ignored(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  lr: 0.2\n")
    cfg = load_config(f, {"train.epochs": 2, "train.lr": None})
    assert (cfg.train.epochs, cfg.train.lr) == (2, 0.2)


def test_unknown_key_names_key_and_suggests(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epoch: 7\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value) == (
        f"invalid config ({f}):\n  unknown key 'train.epoch'. Did you mean 'epochs'? Valid keys here: "
        "epochs, batch_size, lr, optimizer, momentum, weight_decay, label_smoothing, augment, threads, accelerator, "
        "precision, channels_last, seed"
    )


def test_bad_choice_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"data.dataset": "mnist"})
    assert "data.dataset = 'mnist': Input should be 'fashion-mnist', 'cifar10' or 'imagefolder'" in str(err.value)


def test_bad_number() -> None:
    with pytest.raises(ConfigError, match="train.lr = -1: Input should be greater than 0"):
        load_config(None, {"train.lr": -1})


def test_unknown_section_and_non_mapping(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'modle'. Did you mean 'model'?"):
        load_config(None, {"modle.name": "x"})
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, got list"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)


def test_resolved_config_written_and_protected(tmp_path) -> None:
    cfg = load_config(None, {"train.epochs": 4})
    path = write_resolved_config(cfg, tmp_path / "run")
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 4
    write_resolved_config(cfg, tmp_path / "run")  # same config: fine (resume)
    other = load_config(None, {"train.epochs": 5})
    with pytest.raises(ConfigError, match=r"different config \(changed: train.epochs\)"):
        write_resolved_config(other, tmp_path / "run")
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 4  # not overwritten


def test_config_alone_checks_no_device_list() -> None:
    # The schema knows no installed profiles; workflows.config.load_run_config checks them.
    assert load_config(None, {"device": "my-pi"}).device == "my-pi"
    with pytest.raises(ConfigError, match="unknown device. Did you mean 'pi-4'"):
        load_config(None, {"device": "pi4"}, known_devices=["pi-4", "nano"])


def test_unknown_agent_suggests() -> None:
    with pytest.raises(ConfigError, match=r"search.agent = 'optna': .* Did you mean 'optuna'\?"):
        load_config(None, {"search.agent": "optna"})


def test_measured_latency_needs_the_host_device() -> None:
    from edgecompress.config import load_config
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match="search.latency = 'measured' times policies on this machine, but device"):
        load_config(None, {"search.latency": "measured", "device": "raspberry-pi-4"})
    assert load_config(None, {"search.latency": "measured", "device": "host"}).search.latency == "measured"


def test_fill_budget_needs_table_latency() -> None:
    from edgecompress.config import load_config
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match="search.fill_budget = true widens policies by their predicted latency"):
        load_config(None, {"search.latency": "measured", "device": "host", "search.fill_budget": True})
    assert load_config(None, {"search.fill_budget": True}).search.fill_budget is True
