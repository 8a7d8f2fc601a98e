"""Bad input through the CLI: exit status 2, one clear message naming the bad value and what is valid,
no traceback, nothing written (issue 23's table of bad inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgecompress.cli import main

# (case id, command line with {tmp} for the test's folder and {ckpt} for a LeNet-5 checkpoint, expected parts of
# the message: the bad value and the valid choices or the fix). Files named in {tmp} are prepared by _files below.
CASES: list[tuple[str, str, tuple[str, ...]]] = [
    ("unknown model", "analyze --model lenet6", ("unknown model 'lenet6'", "Did you mean 'lenet5'?")),
    ("unknown torchvision model", "analyze --model torchvision:resnet17 --in-channels 3",
     ("unknown torchvision model 'resnet17'", "torchvision classification models")),
    ("factory not importable", "analyze --model nosuchpkg.mod:build", ("cannot import 'nosuchpkg.mod'",)),
    ("analyze without a model", "analyze", ("give --model NAME or --checkpoint PATH",)),
    ("missing checkpoint", "analyze --checkpoint {tmp}/none.pt", ("checkpoint {tmp}/none.pt does not exist",)),
    ("junk checkpoint", "analyze --checkpoint {tmp}/junk.pt", ("cannot read checkpoint {tmp}/junk.pt",)),
    ("plain dict checkpoint", "analyze --checkpoint {tmp}/plain.pt", ("is not an edgecompress checkpoint",)),
    ("checkpoint for another model", "analyze --checkpoint {ckpt} --model resnet20",
     ("--model 'resnet20' does not match checkpoint",)),
    ("missing policy", "analyze --model lenet5 --policy {tmp}/none.json",
     ("policy file {tmp}/none.json does not exist",)),
    ("corrupt policy", "analyze --model lenet5 --policy {tmp}/bad.json", ("is corrupt (not JSON)",)),
    ("not a policy", "analyze --model lenet5 --policy {tmp}/other.json", ("is not an edgecompress policy",)),
    ("policy field out of range", "analyze --model lenet5 --policy {tmp}/keep2.json",
     ("layer 'conv1': keep = 2.0 is invalid; valid: 0 < keep <= 1",)),
    ("policy unknown field", "analyze --model lenet5 --policy {tmp}/field.json",
     ("unknown field 'kep'", "Did you mean 'keep'?")),
    ("policy unknown layer", "analyze --model lenet5 --policy {tmp}/layer.json",
     ("names layer 'conv9'", "Compressible layers: conv1")),
    ("policy future version", "analyze --model lenet5 --policy {tmp}/v9.json",
     ("policy schema version 9; this edgecompress reads versions 1, 2",)),
    ("unknown device", "latency --model lenet5 --device raspberry-pi4",
     ("unknown device 'raspberry-pi4'", "Did you mean 'raspberry-pi-4'?")),
    ("latency without device", "latency --model lenet5", ("give --device NAME",)),
    ("unknown precision", "latency --model lenet5 --device raspberry-pi-4 --precision int9",
     ("precision 'int9' is not one of fp32, fp16, int8",)),
    ("missing config", "config --config {tmp}/none.yaml", ("config file {tmp}/none.yaml does not exist",)),
    ("config not YAML", "config --config {tmp}/bad.yaml", ("is not valid YAML",)),
    ("config not a mapping", "config --config {tmp}/list.yaml", ("must hold a mapping of sections, got list",)),
    ("config unknown key", "config --config {tmp}/key.yaml",
     ("unknown key 'search.episods'", "Did you mean 'episodes'?")),
    ("config bad value", "config --config {tmp}/value.yaml", ("search.budget_ratio = 1.5",)),
    ("config unknown device", "config --config {tmp}/device.yaml", ("device = 'pi9': unknown device",)),
    ("config alias bomb", "config --config {tmp}/bomb.yaml", ("expands to more than 100,000 values",)),
    ("search unknown agent", "search --agent dqn --out {tmp}/run", ("search.agent = 'dqn'", "'ddpg', 'optuna', 'ray'")),
    ("search unknown sampler", "search --agent optuna --sampler bohb --out {tmp}/run", ("search.sampler = 'bohb'",)),
    ("search unknown technique", "search --techniques keep,prune --out {tmp}/run", ("search.techniques.1 = 'prune'",)),
    ("search budget ratio", "search --budget-ratio 1.5 --out {tmp}/run", ("search.budget_ratio = 1.5",)),
    ("search episodes and trials disagree", "search --episodes 3 --trials 4 --out {tmp}/run",
     ("--episodes 3 and --trials 4 disagree",)),
    ("search zero episodes", "search --episodes 0 --out {tmp}/run", ("Invalid value for '--episodes'",)),
    ("search mistyped checkpoint", "search --checkpoint {tmp}/typo.pt --out {tmp}/run",
     ("base checkpoint {tmp}/typo.pt does not exist", "--train-if-missing")),
    ("search measured latency off host", "search --device raspberry-pi-4 --config {tmp}/measured.yaml --out {tmp}/run",
     ("search.latency = 'measured' times policies on this machine",)),
    ("search out is a file", "search --checkpoint {ckpt} --out {tmp}/afile", ("is a file, not a folder",)),
    ("data dir missing", "search --checkpoint {ckpt} --out {tmp}/run --data-dir {tmp}/nodata",
     ("--data-dir {tmp}/nodata: no such folder",)),
    ("train existing output", "train --out {ckpt}", ("already exists; pass --force",)),
    ("train unknown dataset", "train --out {tmp}/m.pt --dataset mnist", ("data.dataset = 'mnist'",)),
    ("train zero epochs", "train --out {tmp}/m.pt --epochs 0", ("Invalid value for '--epochs'",)),
    ("replay missing policy", "replay --policy {tmp}/none.json --out {tmp}/r",
     ("policy file {tmp}/none.json does not exist",)),
    ("replay negative epochs", "replay --policy {tmp}/p.json --out {tmp}/r --finetune-epochs -1",
     ("Invalid value for '--finetune-epochs'",)),
    ("replay policy without checkpoint", "replay --policy {tmp}/p.json --out {tmp}/r",
     ("names no base checkpoint; pass --checkpoint",)),
    ("export unknown format", "export --model {tmp}/r --format pdf --out {tmp}/x", ("unknown export format 'pdf'",)),
    ("export unknown exporter", "export --model {tmp}/r --format onnx --out {tmp}/x --exporter jit",
     ("unknown ONNX exporter 'jit'; valid: torchscript, dynamo",)),
    ("export missing model", "export --model {tmp}/r --format onnx --out {tmp}/x",
     ("compressed model {tmp}/r does not exist (give a replay folder or its model.pt)",)),
    ("replay out is a file", "replay --policy {tmp}/p.json --out {tmp}/afile", ("--out {tmp}/afile is a file",)),
    ("replay out below a file", "replay --policy {tmp}/p.json --out {tmp}/afile/r",
     ("{tmp}/afile is a file, so nothing can be written below it",)),
    ("export out is a folder", "export --model {tmp}/r --format onnx --out {tmp}", ("--out {tmp} is a folder",)),
    ("export out below a file", "export --model {tmp}/r --format onnx --out {tmp}/afile/m.onnx",
     ("{tmp}/afile is a file, so nothing can be written below it",)),
    ("profile unknown runtime", "profile --out {tmp}/t.json --runtime tflite", ("--runtime 'tflite' is not one of",)),
    ("profile unknown precision", "profile --out {tmp}/t.json --precision int4",
     ("--precision 'int4' is not measurable",)),
    ("report not a run folder", "report {tmp}", ("is not a search run folder",)),
    ("unknown option", "models --bogus", ("No such option: --bogus",)),
    # Bring your own model (issue 19): weights trained elsewhere, real input sizes, image folders, accelerators.
    ("weights do not fit", "search --model torchvision:resnet18 --weights {tmp}/lenet_sd.pt --out {tmp}/run",
     ("weights {tmp}/lenet_sd.pt do not fit model 'torchvision:resnet18'", "missing keys", "unexpected keys")),
    ("weights wrong classes", "search --model lenet5 --weights {tmp}/lenet_sd.pt --num-classes 7 --out {tmp}/run",
     ("fc3.weight: model (7, 84), file (10, 84)", "--num-classes 10")),
    ("weights a pickled module", "search --model lenet5 --weights {tmp}/pickled.pt --out {tmp}/run",
     ("unpickling those runs code from the file", "--trust-pickle", "torch.save(model.state_dict(), path)")),
    ("weights missing", "search --model lenet5 --weights {tmp}/none.pt --out {tmp}/run",
     ("weights file {tmp}/none.pt does not exist",)),
    ("weights and checkpoint", "search --model lenet5 --weights {tmp}/lenet_sd.pt --checkpoint {ckpt} --out {tmp}/run",
     ("are both given; give one",)),
    ("weights input size too small", "search --model lenet5 --weights {tmp}/lenet_sd.pt --input-size 8 --out {tmp}/run",
     ("lenet5 cannot take inputs of shape (1, 1, 8, 8)", "--input-size")),
    ("weights channels differ", "search --model lenet5 --weights {tmp}/lenet_sd.pt --channels 3 --out {tmp}/run",
     ("take 1-channel inputs, but the data is served with 3 channels",)),
    ("imagefolder without images", "search --model lenet5 --dataset imagefolder --data-dir {tmp}/imgs_empty "
     "--checkpoint {ckpt} --out {tmp}/run", ("imagefolder: no images in {tmp}/imgs_empty",)),
    ("imagefolder with one class", "search --model lenet5 --dataset imagefolder --data-dir {tmp}/imgs_one "
     "--checkpoint {ckpt} --out {tmp}/run", ("imagefolder: {tmp}/imgs_one has only one class ('a')",)),
    ("bad mean", "search --model lenet5 --weights {tmp}/lenet_sd.pt --mean 0.5,x --out {tmp}/run",
     ("--mean '0.5,x': give comma-separated numbers",)),
    ("unknown accelerator", "search --accelerator tpu --out {tmp}/run",
     ("train.accelerator = 'tpu'", "'auto', 'cpu', 'cuda' or 'mps'")),
    ("fp16 on the cpu", "search --precision fp16 --out {tmp}/run", ("fp16 autocast needs CUDA",)),
    ("gpu shares on the cpu", "search --agent ray --gpus-per-trial 0.5 --out {tmp}/run",
     ("search.gpus_per_trial = 0.5 reserves GPU shares, but train.accelerator is 'cpu'",)),
    # Found by the 2026-12-04 audit: each was a traceback.
    ("config not text", "search --config {tmp}/binary.yaml --out {tmp}/run",
     ("config file {tmp}/binary.yaml is not text (byte 0 is not UTF-8)",)),
    ("compress speedup nan", "compress --speedup nan --out {tmp}/run",
     ("--speedup nan is invalid; valid: a number > 1",)),
    ("compress speedup inf", "compress --speedup inf --out {tmp}/run", ("--speedup inf is invalid",)),
    ("train out is a folder", "train --out {tmp} --force", ("--out {tmp} is a folder; give a file name",)),
    ("checkpoint for other inputs", "search --checkpoint {ckpt} --channels 3 --out {tmp}/run",
     ("holds a lenet5 for 1-channel inputs, but the data is served as 3-channel inputs", "--channels")),
    ("storage not a URL", "search --agent optuna --storage foo --checkpoint {ckpt} --out {tmp}/run",
     ("search.storage 'foo' is not a database URL", "sqlite:////abs/path/study.db")),
    ("search into the user's files", "search --checkpoint {ckpt} --out {tmp}/mine",
     ("--out {tmp}/mine holds best_policy.json, which this command writes, but no config.yaml",)),
    ("replay lr inf", "replay --policy {tmp}/p.json --out {tmp}/r --lr inf", ("lr inf is invalid",)),
    ("search budget inf", "search --budget-ms inf --out {tmp}/run", ("search.budget_ms = inf", "finite number")),
    ("checkpoint is a folder", "analyze --checkpoint {tmp}", ("checkpoint {tmp} is a folder, not a checkpoint file",)),
    ("config is a folder", "config --config {tmp}", ("config file {tmp} is a folder; give a YAML file",)),
    ("empty checkpoint", "analyze --checkpoint {tmp}/empty.pt",
     ("cannot read checkpoint {tmp}/empty.pt: the file is empty",)),
    ("profile out not JSON", "profile --model lenet5 --out {tmp}/notes.json",
     ("{tmp}/notes.json exists and is not JSON", "refusing to extend or replace it")),
    ("techniques naming nothing", "search --techniques , --out {tmp}/run", ("--techniques ',' names nothing",)),
    ("formats naming nothing", "compress --format , --out {tmp}/run", ("--format ',' names nothing",)),
    ("config key twice", "config --config {tmp}/twice.yaml", ("is not valid YAML", "key 'episodes' is given twice")),
    ("plot over a user's file", "latency validate --device raspberry-pi-4 --plot {tmp}/notes.json",
     ("--plot {tmp}/notes.json exists and is not a PNG plot",)),
    ("latency data without split", "latency validate --device raspberry-pi-4 --data-dir {tmp}/nosplit",
     ("nb201_latency.csv has no column 'split'",)),
]  # fmt: skip


def _files(tmp: Path, ckpt: Path) -> None:
    import shutil

    import torch

    (tmp / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {}}, tmp / "plain.pt")
    (tmp / "bad.json").write_text("{")
    (tmp / "other.json").write_text('{"layers": {}}')
    policy = {"format": "edgecompress.policy", "version": 2, "layers": {}}
    for name, layers, version in (("keep2", {"conv1": {"keep": 2.0}}, 2), ("field", {"conv1": {"kep": 0.5}}, 2),
                                  ("layer", {"conv9": {"keep": 0.5}}, 2), ("v9", {}, 9), ("p", {}, 2)):  # fmt: skip
        (tmp / f"{name}.json").write_text(json.dumps({**policy, "layers": layers, "version": version}))
    (tmp / "bad.yaml").write_text("search: [unclosed\n")
    (tmp / "binary.yaml").write_bytes(b"\x80\x81 not text")
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "twice.yaml").write_text("search:\n  episodes: 30\n  episodes: 300\n")
    (tmp / "notes.json").write_text("the user's notes, not JSON")
    (tmp / "mine").mkdir()
    (tmp / "mine" / "best_policy.json").write_text("the user's own file")
    (tmp / "nosplit").mkdir()
    (tmp / "nosplit" / "nb201_latency.csv").write_text("arch_str,hwnb_raspi4_cifar10_ms\nx,1.0\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "key.yaml").write_text("search:\n  episods: 3\n")
    (tmp / "value.yaml").write_text("search:\n  budget_ratio: 1.5\n")
    (tmp / "device.yaml").write_text("device: pi9\n")
    (tmp / "measured.yaml").write_text("search:\n  latency: measured\n")
    levels = ["a: &a [" + ", ".join(['"x"'] * 9) + "]"]
    levels += [f"{n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
    (tmp / "bomb.yaml").write_text("\n".join(levels) + "\n")
    (tmp / "afile").write_text("")
    shutil.copy(ckpt, tmp / "lenet.pt")
    from PIL import Image

    from edgecompress.models import create_model

    torch.save(create_model("lenet5").state_dict(), tmp / "lenet_sd.pt")  # a plain state_dict, trained elsewhere
    torch.save(create_model("lenet5"), tmp / "pickled.pt")  # a whole pickled module
    for cls in ("a", "b"):
        (tmp / "imgs_empty" / cls).mkdir(parents=True)
    (tmp / "imgs_one" / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp / "imgs_one" / "a" / f"{i}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, lenet_checkpoint: Path) -> Path:
    tmp = tmp_path_factory.mktemp("bad")
    _files(tmp, lenet_checkpoint)
    return tmp


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda(folder: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as done:
        main(["search", "--accelerator", "cuda", "--out", str(folder / "run")])
    message = " ".join(capsys.readouterr().err.split())
    assert done.value.code == 2 and "Traceback" not in message
    assert "accelerator 'cuda' asked for, but CUDA is not available" in message
    assert "sees 0 CUDA devices" in message and "--accelerator cpu" in message
    assert not (folder / "run").exists()
    with pytest.raises(SystemExit) as done:
        main(
            [
                "search",
                "--agent",
                "ray",
                "--gpus-per-trial",
                "0.25",
                "--accelerator",
                "auto",
                "--out",
                str(folder / "run"),
            ]
        )
    message = " ".join(capsys.readouterr().err.split())
    assert (
        done.value.code == 2
        and "search.gpus_per_trial = 0.25 (--gpus-per-trial), but this machine has no CUDA" in message
    )
    assert not (folder / "run").exists()


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "command", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(case, command, expected, folder: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _assert_refused(command, expected, folder, capsys, monkeypatch)


def _assert_refused(command: str, expected: tuple[str, ...], folder: Path, capsys, monkeypatch, **names: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(folder)
    names = {"tmp": str(folder), "ckpt": str(folder / "lenet.pt"), **names}
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(SystemExit) as done:
        main([a.format(**names) for a in command.split()])
    captured = capsys.readouterr()
    message = " ".join((captured.err + captured.out).split())  # rich wraps long lines
    message = message.replace("│", " ").replace("  ", " ")
    assert done.value.code == 2, message
    assert "Traceback" not in message
    for part in expected:
        assert " ".join(part.format(**names).split()) in message, (part, message)
    after = sorted(p.relative_to(folder) for p in folder.rglob("*") if not p.name.startswith("."))
    assert after == [p for p in before if not p.name.startswith(".")], set(after) ^ set(before)


# An --out where no file can be created, even by root (the tests run as root: permission bits do not stop it).
# Each command line would fail later on another input (data folder, checkpoint, model), so the --out error
# shows that the output is checked first, before any work.
READ_ONLY: list[tuple[str, str, tuple[str, ...]]] = [
    ("search out read-only", "search --checkpoint {ckpt} --data-dir {tmp}/nodata --out {ro}/run",
     ("--out {ro}/run: cannot create files in {ro}", "choose an --out on a writable file system")),
    ("replay out read-only", "replay --policy {tmp}/p.json --out {ro}/r",
     ("--out {ro}/r: cannot create files in {ro}", "choose an --out on a writable file system")),
    ("export out read-only", "export --model {tmp}/r --format onnx --out {ro}/m.onnx",
     ("--out {ro}/m.onnx: cannot create files in {ro}", "choose an --out on a writable file system")),
]  # fmt: skip


@pytest.fixture(scope="module")
def read_only() -> Path:
    from edgecompress._io import probe_writable

    for candidate in (Path("/sys"), Path("/proc")):
        if candidate.is_dir() and probe_writable(candidate) is not None:
            return candidate
    pytest.skip("no location here refuses to create files for this user (tried /sys and /proc)")


@pytest.mark.parametrize(("case", "command", "expected"), READ_ONLY, ids=[c[0] for c in READ_ONLY])
def test_an_out_on_a_read_only_location_is_refused_before_any_work(  # type: ignore[no-untyped-def]
    case, command, expected, folder: Path, read_only: Path, capsys, monkeypatch
) -> None:
    _assert_refused(command, expected, folder, capsys, monkeypatch, ro=str(read_only))


def test_what_bad_input_raises_deeper_down_is_one_paragraph() -> None:
    """An allocation too large for the machine, a file-system refusal, a value derived from a flag: one paragraph
    each (a real 300 GB allocation is not attempted here: with memory overcommit it may succeed and be killed)."""
    from edgecompress.cli import _input_error

    alloc = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                         "to allocate 336000000000 bytes.")  # fmt: skip
    assert _input_error(alloc).startswith("out of memory: [enforce fail")  # type: ignore[union-attr]
    assert "check --input-size, --num-classes, --in-channels" in _input_error(MemoryError())  # type: ignore[operator]
    assert _input_error(IsADirectoryError(21, "Is a directory", "/x/a.tmp", None, "/x/a")) == (
        "cannot use /x/a.tmp -> /x/a: Is a directory; choose another path"
    )
    assert _input_error(RuntimeError("shape mismatch")) is None and _input_error(OSError("no file named")) is None
