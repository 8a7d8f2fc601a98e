"""Accelerators: names, precisions, layouts, and models coming back where they were."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from edgecompress.config import TrainConfig
from edgecompress.errors import ConfigError
from edgecompress.training import distill, evaluate, recalibrate_batchnorm, train
from edgecompress.training.accelerator import (
    autocast,
    describe,
    grad_scaler,
    model_device,
    on_device,
    resolve_accelerator,
    use_channels_last,
)

CPU = torch.device("cpu")


def tiny_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip


def tiny_data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def on_cpu_and_contiguous(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)


# --- resolve_accelerator -----------------------------------------------------------------------------------


def test_cpu_always_resolves() -> None:
    assert resolve_accelerator("cpu") == CPU
    assert resolve_accelerator(CPU) == CPU


def test_auto_picks_cuda_then_mps_then_cpu() -> None:
    if torch.cuda.is_available():
        expected = "cuda"
    elif torch.backends.mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert resolve_accelerator("auto").type == expected


def test_auto_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_accelerator("auto") == CPU


def test_cuda_without_cuda_says_what_torch_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    count = torch.cuda.device_count()
    for asked in ("cuda", torch.device("cuda")):
        with pytest.raises(ConfigError) as info:
            resolve_accelerator(asked)
        message = str(info.value)
        assert message.startswith("accelerator 'cuda' asked for, but CUDA is not available: torch ")
        assert torch.__version__ in message
        assert f"torch.cuda.device_count() = {count}" in message
        assert "--accelerator cpu" in message and "auto" in message
    build = f"a build for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    assert build in message


def test_cuda_error_names_a_cpu_only_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ConfigError, match=r"is a CPU-only build and sees 0 CUDA devices"):
        resolve_accelerator("cuda")


def test_mps_without_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^accelerator 'mps' asked for, but MPS is not available: torch ") as info:
        resolve_accelerator("mps")
    assert "--accelerator cpu" in str(info.value)


def test_unknown_accelerator_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown accelerator 'quantum'\. Valid accelerators: auto, cpu, cuda, mps$"):
        resolve_accelerator("quantum")
    with pytest.raises(ConfigError, match=r"'gpu'\. Did you mean 'cuda' \(or 'auto'\)\?"):
        resolve_accelerator("gpu")
    with pytest.raises(ConfigError, match=r"Did you mean 'cuda'\?"):
        resolve_accelerator("cdua")


# --- precision and layout ----------------------------------------------------------------------------------


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ConfigError, match=r"fp16 autocast needs CUDA.*use --precision bf16 or fp32"):
        autocast(CPU, "fp16")
    model = tiny_conv()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="fp16 autocast needs CUDA"):
        train(model, tiny_data(), TrainConfig(epochs=1, precision="fp16"), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # rejected before any step
    with pytest.raises(ConfigError, match="fp16 autocast needs CUDA"):
        evaluate(model, tiny_data(), precision="fp16")
    with pytest.raises(ConfigError, match=r"unknown precision 'fp8'"):
        evaluate(model, tiny_data(), precision="fp8")


def test_autocast_and_scaler_choices() -> None:
    with autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.randn(2, 3) @ torch.randn(3, 2)).dtype == torch.bfloat16
    assert grad_scaler(CPU, "fp32") is None and grad_scaler(CPU, "bf16") is None


def test_channels_last_default_follows_the_device() -> None:
    assert use_channels_last(CPU, None) is False
    assert use_channels_last(torch.device("cuda"), None) is True
    assert use_channels_last(CPU, True) is True
    assert use_channels_last(torch.device("cuda"), False) is False


def test_describe_cpu() -> None:
    threads = torch.get_num_threads()
    assert describe(CPU) == f"cpu ({threads} thread{'s' if threads != 1 else ''})"


def test_model_without_tensors_stays_put() -> None:
    model = nn.ReLU()
    assert model_device(model) is None
    with on_device(model, CPU, channels_last=True) as inside:
        assert inside is model


# --- training on the CPU -----------------------------------------------------------------------------------


def test_bf16_trains_on_the_cpu() -> None:
    model = tiny_conv()
    result = train(
        model, tiny_data(), TrainConfig(epochs=2, batch_size=16, precision="bf16"), val_set=tiny_data(32),
        max_batches=3, progress=False,
    )  # fmt: skip
    assert result.precision == "bf16" and result.device.startswith("cpu (")
    assert all(math.isfinite(r.train_loss) for r in result.history)
    assert 0.0 <= result.history[-1].val_acc <= 1.0
    assert on_cpu_and_contiguous(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a bf16 model
    acc = evaluate(model, tiny_data(), precision="bf16")["top1"]
    assert 0.0 <= acc <= 1.0


def test_channels_last_on_the_cpu_returns_a_contiguous_model() -> None:
    states = {}
    for nhwc in (True, False):
        model = tiny_conv()
        result = train(
            model, tiny_data(), TrainConfig(epochs=1, batch_size=16, channels_last=nhwc, augment=True),
            max_batches=2, progress=False,
        )  # fmt: skip
        assert result.channels_last is nhwc
        assert on_cpu_and_contiguous(model)
        states[nhwc] = model.state_dict()
    for key, value in states[True].items():
        torch.testing.assert_close(value, states[False][key], rtol=1e-4, atol=1e-5)
    model = tiny_conv()
    cpu_acc = evaluate(model, tiny_data())["top1"]
    assert evaluate(model, tiny_data(), channels_last=True)["top1"] == cpu_acc
    assert on_cpu_and_contiguous(model)


def test_model_comes_back_when_training_fails() -> None:
    model = tiny_conv()

    def broken(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.is_contiguous(memory_format=torch.channels_last)
        raise RuntimeError("boom")

    cfg = TrainConfig(epochs=1, batch_size=16, channels_last=True)
    with pytest.raises(RuntimeError, match="boom"):
        train(model, tiny_data(), cfg, loss_fn=broken, progress=False)
    assert on_cpu_and_contiguous(model)


def test_recalibrate_batchnorm_takes_an_accelerator() -> None:
    model = tiny_conv()
    inputs = [x for x, _ in [tiny_data(16)[:]]]
    recalibrate_batchnorm(model, inputs, accelerator="cpu")
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d)
    assert not model.training and bn.momentum == 0.1 and int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(bn.running_mean, model[0](inputs[0]).mean(dim=(0, 2, 3)).detach())
    with pytest.raises(ConfigError, match="unknown accelerator"):
        recalibrate_batchnorm(model, inputs, accelerator="tpu")


def test_distill_forwards_accelerator_and_precision() -> None:
    teacher, student = tiny_conv(), tiny_conv()
    history = distill(
        student, teacher, tiny_data(), epochs=1, batch_size=16, max_batches=2, progress=False,
        accelerator="cpu", precision="bf16", channels_last=True,
    )  # fmt: skip
    assert len(history) == 1 and math.isfinite(history[0].train_loss)
    assert on_cpu_and_contiguous(student) and on_cpu_and_contiguous(teacher)
    with pytest.raises(ConfigError, match="fp16 autocast needs CUDA"):
        distill(student, teacher, tiny_data(), progress=False, precision="fp16")


# --- CUDA --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCuda:
    def test_resolve_and_describe(self) -> None:
        device = resolve_accelerator("cuda")
        assert device.type == "cuda" and resolve_accelerator("auto").type == "cuda"
        assert describe(device).startswith("cuda:") and "GiB)" in describe(device)

    def test_augment_on_the_gpu_matches_the_cpu(self) -> None:
        from edgecompress.training import augment_batch

        x = torch.randn(16, 3, 12, 12)
        on_cpu = augment_batch(x, torch.Generator().manual_seed(5))
        on_gpu = augment_batch(x.cuda(), torch.Generator().manual_seed(5))
        assert torch.equal(on_cpu, on_gpu.cpu())

    @pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
    def test_train_and_evaluate(self, tiny_fmnist, precision: str) -> None:  # type: ignore[no-untyped-def]
        from edgecompress.data import load_dataset
        from edgecompress.models import create_model

        data = load_dataset("fashion-mnist", tiny_fmnist, val_size=40)
        torch.manual_seed(0)
        model = create_model("lenet5")
        cfg = TrainConfig(epochs=8, batch_size=32, accelerator="cuda", precision=precision, augment=False)
        result = train(model, data.train, cfg, val_set=data.val, progress=False)
        assert result.device.startswith("cuda:") and result.precision == precision and result.channels_last
        assert on_cpu_and_contiguous(model)
        assert all(math.isfinite(r.train_loss) for r in result.history)
        assert result.history[-1].train_loss < result.history[0].train_loss
        n = len(data.test)  # type: ignore[arg-type]
        cpu = evaluate(model, data.test)["top1"]
        gpu = evaluate(model, data.test, accelerator="cuda")["top1"]
        mixed = evaluate(model, data.test, accelerator="cuda", precision=precision)["top1"]
        assert on_cpu_and_contiguous(model)
        assert cpu >= 0.8
        assert abs(cpu - gpu) * n <= 1
        assert abs(cpu - mixed) * n <= 3  # reduced precision may flip a near tie or two

    def test_evaluate_resnet_matches_the_cpu(self, tiny_fmnist) -> None:  # type: ignore[no-untyped-def]
        from edgecompress.data import load_dataset
        from edgecompress.models import create_model

        data = load_dataset("fashion-mnist", tiny_fmnist, val_size=40)
        torch.manual_seed(0)
        model = create_model("resnet20", 10, 1, input_size=28)
        train(model, data.train, TrainConfig(epochs=2, batch_size=32, accelerator="cuda"), progress=False)
        assert on_cpu_and_contiguous(model)
        cpu = evaluate(model, data.test)["top1"]
        gpu = evaluate(model, data.test, accelerator="cuda")["top1"]
        assert abs(cpu - gpu) * len(data.test) <= 1  # type: ignore[arg-type]

    @pytest.mark.parametrize("precision", ["fp32", "fp16"])
    def test_distill_keeps_constraints_and_returns_both_models(self, tiny_fmnist, precision: str) -> None:  # type: ignore[no-untyped-def]
        from edgecompress import Policy, compress
        from edgecompress.data import load_dataset
        from edgecompress.models import create_model

        data = load_dataset("fashion-mnist", tiny_fmnist, val_size=40)
        torch.manual_seed(0)
        teacher = create_model("lenet5")
        train(teacher, data.train, TrainConfig(epochs=8, batch_size=32, accelerator="cuda"), progress=False)
        teacher_acc = evaluate(teacher, data.test)["top1"]
        policy = Policy.uniform(teacher, keep=0.5, sparsity=0.7, clusters=8, base={"input_shape": [1, 1, 28, 28]})
        student, _ = compress(teacher, policy)
        zeros = student.fc1.weight == 0
        history = distill(
            student, teacher, data.train, epochs=6, lr=0.01, batch_size=32, progress=False,
            accelerator="cuda", precision=precision,
        )  # fmt: skip
        assert on_cpu_and_contiguous(student) and on_cpu_and_contiguous(teacher)
        assert history[-1].train_loss < history[0].train_loss
        assert evaluate(student, data.test, accelerator="cuda")["top1"] >= teacher_acc - 0.15
        assert bool((student.fc1.weight[zeros] == 0).all())
        assert torch.unique(student.fc1.weight[~zeros]).numel() <= 8

    def test_recalibrate_batchnorm_on_the_gpu(self, tiny_fmnist, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        """The GPU's statistics are the CPU's. PyTorch runs cuDNN convolutions in TF32 on Ampere and newer GPUs
        by default (torch.backends.cudnn.allow_tf32): on an H200 that moved layers.6.bn2's running mean past
        1e-3 of the CPU's, so this comparison runs them in full fp32."""
        import copy

        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)

        from edgecompress.data import batches, load_dataset
        from edgecompress.models import create_model

        data = load_dataset("fashion-mnist", tiny_fmnist, val_size=40)
        torch.manual_seed(0)
        model = create_model("resnet20", 10, 1, input_size=28)
        inputs = [x for x, _ in batches(data.train, 32)][:3]
        twin = copy.deepcopy(model)
        recalibrate_batchnorm(model, inputs)
        recalibrate_batchnorm(twin, inputs, accelerator="cuda")
        assert on_cpu_and_contiguous(twin) and not twin.training
        for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)

    def test_model_comes_back_from_the_gpu_when_training_fails(self) -> None:
        model = tiny_conv()

        def broken(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            assert x.is_cuda and logits.is_cuda
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            train(model, tiny_data(), TrainConfig(epochs=1, accelerator="cuda"), loss_fn=broken, progress=False)
        assert on_cpu_and_contiguous(model)


def test_step_says_whether_the_optimizer_stepped() -> None:
    """A gradient scaler skips the step of a batch whose scaled gradients overflow; ``step`` says so, and the
    training loops then hold their learning-rate schedule (PyTorch warns when a scheduler steps before its
    optimizer has, as it did in fp16 training on a GPU)."""
    from edgecompress.training.accelerator import step

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = model.weight.detach().clone()
    assert step(model(torch.full((1, 2), 1e35)).sum(), opt, scaler) is False  # x 2**16 overflows float32
    assert torch.equal(model.weight, before) and scaler.get_scale() == 2.0**15
    opt.zero_grad(set_to_none=True)
    assert step(model(torch.ones(1, 2)).sum(), opt, scaler) is True
    assert not torch.equal(model.weight, before)
    assert step(model(torch.ones(1, 2)).sum(), opt, None) is True


def test_training_holds_its_schedule_while_the_scaler_skips_steps(monkeypatch) -> None:
    """fp16 training on a GPU starts with steps its gradient scaler skips; ``train`` then holds the learning-rate
    schedule (one scheduler step per optimizer step) and PyTorch does not warn. On the CPU a scaler with a huge
    initial scale makes the first steps overflow the same way."""
    import warnings

    from edgecompress.training import loop

    scalers: list[torch.amp.GradScaler] = []

    def overflowing(device, precision):  # type: ignore[no-untyped-def]
        scalers.append(torch.amp.GradScaler("cpu", init_scale=2.0**126))
        return scalers[-1]

    steps: list[int] = []
    real_step = torch.optim.lr_scheduler.LambdaLR.step

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        steps.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(loop, "grad_scaler", overflowing)
    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", counted)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(256, 1, 8, 8) * 1e3, torch.randint(0, 3, (256,)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tiny_conv(), data, TrainConfig(epochs=1, batch_size=16), progress=False)
    skipped = round(math.log2(2.0**126 / scalers[0].get_scale()))
    assert 0 < skipped < 16  # some steps were skipped, and then training went on
    assert len(steps) == 1 + 16 - skipped  # the scheduler's own first step at construction, then one per step
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
