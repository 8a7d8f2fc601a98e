from __future__ import annotations

import json

import pytest
import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.latency_models import estimate_latency, load_device, profiler
from edgecompress.latency_models.ops import trace_ops
from edgecompress.latency_models.table import LatencyTable, reachable_keys
from edgecompress.models import create_model


def _table(entries: dict[str, float], **meta) -> LatencyTable:
    base = {"device": "bench", "runtime": "onnxruntime", "threads": 2, "overhead_ms": 0.0, "repeats": 5}
    return LatencyTable({**base, **meta}, {k: {"ms": v} for k, v in entries.items()})


def test_lookup_exact_and_interpolated() -> None:
    t = _table({
        "conv|8|8|3|1|1|28|28|fp32": 1.0, "conv|8|16|3|1|1|28|28|fp32": 2.0,
        "conv|16|8|3|1|1|28|28|fp32": 3.0, "conv|16|16|3|1|1|28|28|fp32": 5.0,
        "depthwise|8|8|3|1|8|28|28|fp32": 0.4, "depthwise|16|16|3|1|16|28|28|fp32": 0.8,
    })  # fmt: skip
    hit = t.lookup("conv|8|16|3|1|1|28|28|fp32")
    assert hit is not None and (hit.ms, hit.source) == (2.0, "table")
    mid = t.lookup("conv|12|12|3|1|1|28|28|fp32")  # bilinear: mean of the four corners
    assert mid is not None and mid.source == "interpolated" and mid.ms == pytest.approx(2.75)
    edge = t.lookup("conv|8|12|3|1|1|28|28|fp32")
    assert edge is not None and edge.ms == pytest.approx(1.5)
    dw = t.lookup("depthwise|12|12|3|1|12|28|28|fp32")
    assert dw is not None and dw.ms == pytest.approx(0.6)
    assert t.lookup("conv|32|16|3|1|1|28|28|fp32") is None  # outside the measured range
    assert t.lookup("conv|12|12|3|2|1|28|28|fp32") is None  # another stride
    assert t.lookup("conv|12|12|3|1|1|28|28|int8") is None  # another precision


def test_lookup_rounds_conv_channels_up_to_the_simd_block() -> None:
    entries = {
        "conv|16|16|3|1|1|7|7|fp32": 1.0, "conv|16|32|3|1|1|7|7|fp32": 2.0,
        "conv|32|16|3|1|1|7|7|fp32": 3.0, "conv|32|32|3|1|1|7|7|fp32": 5.0,
        "conv|8|16|3|1|1|7|7|fp32": 0.5, "conv|8|32|3|1|1|7|7|fp32": 0.9,
        "linear|16|10|1|1|1|1|1|fp32": 0.1, "linear|32|10|1|1|1|1|1|fp32": 0.3,
    }  # fmt: skip
    plain, blocked = _table(entries), _table(entries, channel_block=16)
    assert plain.channel_block == 1 and blocked.channel_block == 16
    # 24 output channels compute as 32; 24 input channels (above one block) read as 32 too.
    hit = blocked.lookup("conv|16|24|3|1|1|7|7|fp32")
    assert hit is not None and (hit.ms, hit.source) == (2.0, "table (channel block)")
    hit = blocked.lookup("conv|24|24|3|1|1|7|7|fp32")
    assert hit is not None and hit.ms == 5.0
    plain_hit = plain.lookup("conv|24|24|3|1|1|7|7|fp32")  # without a block: the bilinear midpoint
    assert plain_hit is not None and plain_hit.ms == pytest.approx(2.75)
    # Input channels below one block are read as they are: 12 lies between the measured 8 and 16.
    low = blocked.lookup("conv|12|24|3|1|1|7|7|fp32")
    assert low is not None and low.source == "interpolated" and low.ms == pytest.approx((0.9 + 2.0) / 2)
    # A block past the measured range falls back to plain interpolation; other kinds are never blocked.
    assert blocked.blocked_channels("conv", 40, 40) == (48, 48)
    assert blocked.lookup("conv|16|20|3|1|1|7|7|fp32").ms == 2.0  # type: ignore[union-attr]
    lin = blocked.lookup("linear|24|10|1|1|1|1|1|fp32")
    assert lin is not None and lin.ms == pytest.approx(0.2)


def test_int8_convolutions_read_their_input_channels_unblocked() -> None:
    """ONNX Runtime's x86 int8 convolutions (im2col and a quantized GEMM) cost in proportion to input channels
    and step every block of output channels; the float ones step in both. ``int8_input_block`` in the meta
    restores the float rule (how tables were read before 2026-12-04)."""
    entries = {f"conv|{ci}|{co}|3|1|1|7|7|{p}": (ci + co) / 10 for ci in (16, 32) for co in (16, 32)
               for p in ("fp32", "int8")}  # fmt: skip
    table = _table(entries, channel_block=16)
    assert table.blocked_channels("conv", 24, 24, "int8") == (24, 32)
    assert table.blocked_channels("conv", 24, 24, "fp32") == (32, 32)
    int8 = table.lookup("conv|24|24|3|1|1|7|7|int8")
    assert int8 is not None and int8.source == "interpolated" and int8.ms == pytest.approx((24 + 32) / 10)
    fp32 = table.lookup("conv|24|24|3|1|1|7|7|fp32")
    assert fp32 is not None and (fp32.ms, fp32.source) == (6.4, "table (channel block)")
    before = _table(entries, channel_block=16, int8_input_block=16)
    assert before.lookup("conv|24|24|3|1|1|7|7|int8").ms == pytest.approx(6.4)  # type: ignore[union-attr]


def test_channel_block_reads_the_cpu_flags(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(profiler.platform, "machine", lambda: "x86_64")
    info = tmp_path / "cpuinfo"
    for flags, block in (("fpu sse2 avx2 avx512f", 16), ("fpu sse2 avx2", 8), ("fpu sse2", 1)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert profiler.channel_block("onnxruntime", str(info)) == block
    assert profiler.channel_block("tensorrt", str(info)) == 1
    assert profiler.channel_block("onnxruntime", str(tmp_path / "missing")) == 1
    monkeypatch.setattr(profiler.platform, "machine", lambda: "aarch64")
    info.write_text("flags\t\t: avx512f\n")
    assert profiler.channel_block("onnxruntime", str(info)) == 1


def test_round_trip_and_bad_files(tmp_path) -> None:
    t = _table({"linear|64|10|1|1|1|1|1|fp32": 0.01})
    path = t.save(tmp_path / "t.json")
    again = LatencyTable.load(path)
    assert again.entries == t.entries and again.meta == t.meta
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(EdgeCompressError, match="is corrupt \\(not JSON\\)"):
        LatencyTable.load(tmp_path / "bad.json")
    doc = json.loads(path.read_text())
    doc["version"] = 7
    (tmp_path / "v7.json").write_text(json.dumps(doc))
    with pytest.raises(EdgeCompressError, match="has table version 7; this edgecompress reads version 1"):
        LatencyTable.load(tmp_path / "v7.json")
    (tmp_path / "other.json").write_text('{"entries": {}}')
    with pytest.raises(EdgeCompressError, match="is not an edgecompress latency table"):
        LatencyTable.load(tmp_path / "other.json")
    doc["version"] = 1
    doc["entries"] = {"conv|x": {"ms": 1}}
    (tmp_path / "key.json").write_text(json.dumps(doc))
    with pytest.raises(EdgeCompressError, match="bad entry 'conv\\|x'"):
        LatencyTable.load(tmp_path / "key.json")


def test_profiler_measures_every_reachable_signature_and_resumes(tmp_path) -> None:
    keys = reachable_keys(trace_ops(create_model("lenet5"), (1, 1, 28, 28)))
    assert len(keys) == 210
    # conv2 (6 -> 16 channels, 14x14 input) down to the searches' smallest keep, 0.2 (16 -> 3 channels)
    assert "conv|1|3|5|1|1|14|14|fp32" in keys and "conv|6|3|5|1|1|14|14|fp32" in keys
    out = tmp_path / "lenet.json"
    calls: list[str] = []
    profiler.run(keys, out, repeats=2, warmup=1, progress=lambda d, n, k, ms: calls.append(k))
    table = LatencyTable.load(out)
    assert set(table.entries) == set(keys) and len(calls) == len(keys)
    assert all(e["ms"] > 0 for e in table.entries.values()) and table.overhead_ms > 0
    assert table.meta["runtime"] == "onnxruntime" and table.meta["repeats"] == 2 and table.meta["statistic"] == "median"
    calls.clear()
    profiler.run(keys, out, repeats=2, warmup=1, progress=lambda d, n, k, ms: calls.append(k))
    assert calls == []  # nothing re-measured
    with pytest.raises(ValueError, match="was measured with threads=2, this run has 1"):
        profiler.run(keys, out, threads=1, repeats=2, warmup=1)
    with pytest.raises(ValueError, match="cannot measure precision int8"):
        profiler.run(["linear|4|4|1|1|1|1|1|int8"], tmp_path / "t.json", runtime="torch")


def test_profiler_passes_take_the_median_and_resume(tmp_path, monkeypatch) -> None:
    """Each pass measures every key once more; a re-run with more passes completes only what is missing."""
    keys = ["conv|4|4|3|1|1|8|8|fp32", "linear|4|4|1|1|1|1|1|fp32"]
    fake = iter([1.0, 5.0, 3.0, 9.0, 2.0, 4.0, 7.0, 6.0])
    order: list[str] = []

    def measure(key, runtime, threads, warmup, repeats, files=None, convert=None):
        order.append(key)
        return next(fake)

    monkeypatch.setattr(profiler, "measure", measure)
    monkeypatch.setattr(profiler, "overhead_ms", lambda *a: 0.001)
    out = tmp_path / "p.json"
    profiler.run(keys, out, passes=3)
    assert order == keys * 3  # pass after pass, not one key three times in a row
    entries = LatencyTable.load(out).entries
    assert entries[keys[0]] == {"ms": 2.0, "passes_ms": [1.0, 3.0, 2.0], "date": entries[keys[0]]["date"]}
    assert entries[keys[1]]["ms"] == 5.0 and entries[keys[1]]["passes_ms"] == [5.0, 9.0, 4.0]
    order.clear()
    table = profiler.run(keys, out, passes=4)
    assert order == keys and table["meta"]["passes"] == 4
    assert table["entries"][keys[0]]["ms"] == 2.5 and table["entries"][keys[1]]["passes_ms"] == [5.0, 9.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="passes must be >= 1, got 0"):
        profiler.run(keys, out, passes=0)


def test_profiler_int8_and_torch(tmp_path) -> None:
    key = "conv|8|8|3|1|1|14|14|int8"
    assert profiler.measure(key, "onnxruntime", threads=1, warmup=1, repeats=2) > 0
    assert profiler.measure("conv|8|8|3|1|1|14|14|fp32", "torch", threads=1, warmup=1, repeats=2) > 0


def test_litert_plan_folder_is_measured_by_the_standalone_profiler(tmp_path) -> None:
    """`profile --runtime litert --plan-only` converts every operator; profiler.py, copied alone to the
    "device", times those files in the LiteRT interpreter without the converter."""
    import shutil
    import subprocess
    import sys

    from edgecompress.latency_models.litert import write_litert_plan

    keys = ["conv|8|8|3|1|1|14|14|fp32", "conv|8|8|3|1|1|14|14|int8", "linear|16|10|1|1|1|1|1|fp32"]
    folder = tmp_path / "plan-litert"
    write_litert_plan(keys, folder, "test")
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["runtime"] == "litert" and plan["keys"] == keys
    assert set(plan["files"]) == {profiler.OVERHEAD_KEY, *keys}
    assert all((folder / name).read_bytes()[4:8] == b"TFL3" for name in plan["files"].values())  # flatbuffers
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(profiler.__file__, device / "profiler.py")
    done = subprocess.run(
        [sys.executable, "profiler.py", str(folder), "--out", "t.json", "--repeats", "3", "--warmup", "1",
         "--threads", "1"], cwd=device, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = LatencyTable.load(device / "t.json")
    assert table.meta["runtime"] == "litert" and "ai-edge-litert" in table.meta["versions"]
    assert set(table.entries) == set(keys) and all(e["ms"] > 0 for e in table.entries.values())
    assert table.overhead_ms > 0
    with pytest.raises(ValueError, match="no LiteRT file for conv.* write the plan with"):
        profiler.measure("conv|4|4|3|1|1|8|8|fp32", "litert", 1, 1, 2)


def test_estimator_names_each_source() -> None:
    import torch

    from edgecompress.latency_models.table import op_key

    model = create_model("lenet5")
    ops = trace_ops(model, (1, 1, 28, 28))
    # Exactly the base model's signatures, without fc3's; fc1 also at 90 outputs.
    entries = {op_key(op): 0.01 for op in ops if op.layer != "fc3"}
    entries["linear|400|90|1|1|1|1|1|fp32"] = 0.005
    table = _table(entries, device="raspberry-pi-4")
    report = estimate_latency(model, (1, 1, 28, 28), table)
    sources = {r.layer: r.source for r in report.rows}
    assert sources["conv1"] == "table" and sources["fc3"] == "missing"
    assert report.missing == ["linear|84|10|1|1|1|1|1|fp32"]
    assert any("not in the table" in w for w in report.warnings)
    # With the device model behind the table, the miss is priced by it.
    both = estimate_latency(model, (1, 1, 28, 28), "raspberry-pi-4", table=table)
    assert {r.layer: r.source for r in both.rows}["fc3"] == "device model raspberry-pi-4" and not both.missing
    small = create_model("lenet5")
    small.fc1 = torch.nn.Linear(400, 100)  # 100 outputs: between the measured 90 and 120
    small.fc2 = torch.nn.Linear(100, 84)
    interp = estimate_latency(small, (1, 1, 28, 28), "raspberry-pi-4", table=table)
    rows = {r.layer: r for r in interp.rows}
    assert rows["fc1"].source == "interpolated"
    assert rows["fc1"].ms == pytest.approx(0.005 + (0.01 - 0.005) * (100 - 90) / 30)
    assert rows["fc2"].source == "device model raspberry-pi-4"  # 100 inputs: nothing to interpolate from


def test_estimator_refuses_mismatched_tables() -> None:
    table = _table({"linear|84|10|1|1|1|1|1|fp32": 0.01}, device="jetson-nano")
    with pytest.raises(EdgeCompressError, match="was measured on 'jetson-nano', not 'raspberry-pi-4'; pass --force"):
        estimate_latency(create_model("lenet5"), (1, 1, 28, 28), "raspberry-pi-4", table=table)
    with pytest.raises(EdgeCompressError, match="holds precisions \\['fp32'\\], not \\['int8'\\]"):
        estimate_latency(create_model("lenet5"), (1, 1, 28, 28), table, precision="int8")
    forced = estimate_latency(create_model("lenet5"), (1, 1, 28, 28), table, precision="int8", force=True)
    assert forced.missing  # nothing at int8 in the table: listed, not invented


def test_unknown_operators_are_reported() -> None:
    report = estimate_latency(create_model("torchvision:mobilenet_v3_small", 10, 3), (1, 3, 64, 64), "jetson-nano")
    assert any(w.startswith("operators the estimator does not know, not counted: hardsigmoid, hardswish")
               for w in report.warnings)  # fmt: skip


def test_shipped_host_table_prices_the_zoo() -> None:
    host = load_device("host")
    assert isinstance(host, LatencyTable) and "validation" in host.meta and "context" in host.meta
    for name in ("lenet5", "resnet20", "mobilenetv2"):
        report = estimate_latency(create_model(name), (1, 1, 28, 28), "host")
        assert not report.missing and report.total_ms > 0
        # at int8 too: weighted layers from the int8 entries, adds and pools outside layers at fp32
        int8 = estimate_latency(create_model(name), (1, 1, 28, 28), "host", precision="int8")
        assert not int8.missing and int8.total_ms > 0
        assert [r.ops for r in int8.rows if r.layer == "(precision changes)"] == [2]  # the input and the output


def test_in_graph_profiling_maps_nodes_to_signatures(tmp_path) -> None:
    import torch

    from edgecompress.latency_models.onnx import to_onnx

    model = create_model("resnet20").eval()
    path = tmp_path / "resnet20.onnx"
    path.write_bytes(to_onnx(model, (1, 1, 28, 28)))
    table_doc = profiler.run_in_graph([path], tmp_path / "t.json", repeats=3, warmup=1)
    table = LatencyTable.load(tmp_path / "t.json")
    assert table.meta["mode"] == "in-graph" and table.meta["fused_adds"] is True
    assert "conv|16|16|3|1|1|28|28|fp32" in table.entries  # the stage-1 3x3 convolutions
    assert "conv|16|32|1|2|1|28|28|fp32" in table.entries  # the strided 1x1 shortcut
    assert "linear|64|10|1|1|1|1|1|fp32" in table.entries
    report = estimate_latency(model, (1, 1, 28, 28), table)
    assert not report.missing and report.total_ms > 0
    adds = [r for r in report.rows if r.layer == "(other)"]
    assert adds and "fused into the preceding convolution" in adds[0].source
    assert table_doc["entries"]["conv|16|16|3|1|1|28|28|fp32"]["samples"] >= 5
    del torch


def test_in_graph_profiling_refuses_another_runtime(tmp_path, capsys) -> None:
    """profiler.py on a folder of probe models times ONNX Runtime's CPU provider; asked for a GPU runtime it
    stops and says what to do instead of filing CPU times."""
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "p.onnx").write_bytes(b"")
    with pytest.raises(SystemExit) as done:
        profiler.main([str(tmp_path / "probes"), "--out", str(tmp_path / "t.json"), "--runtime", "onnxruntime-cuda"])
    assert str(done.value.code).startswith("--runtime onnxruntime-cuda: in-graph profiling (a folder of probe ")
    assert "without --in-graph" in str(done.value.code) and not (tmp_path / "t.json").exists()


def test_fit_context_recovers_known_factors_from_round_robin_medians(monkeypatch) -> None:
    """Synthetic in-graph timings built from known factors and a known cost per dispatched operator,
    with one round slowed by 60%: the per-model median over rounds ignores the slow round and the fit
    returns the factors, and the estimator then reproduces the timings."""
    import numpy as np

    from edgecompress.latency_models import host
    from edgecompress.latency_models.estimate import dispatched_ops

    table = load_device("host")
    known = {"conv": 0.7, "depthwise": 0.3, "eltwise": 0.1}
    calls = {}

    def fake_timing(models, feeds, threads, rounds, warmup, repeats, progress=None):
        calls.update(n=len(models), rounds=rounds, repeats=repeats)
        # The sums each exported model should have: recompute from the labels' order.
        out = {}
        for label, truth in zip(models, expected, strict=True):
            out[label] = [truth, truth * 1.6, truth][:rounds]
        return out

    expected, models, per_op = [], [], 0.004
    real_sums = host._kind_sums

    def recording_sums(model, shape, tbl):
        sums = real_sums(model, shape, tbl)
        n = dispatched_ops(trace_ops(model, shape))
        expected.append(tbl.overhead_ms + sum(known[g] * sums.get(g, 0.0) for g in known) + per_op * n)
        models.append(model)
        return sums

    monkeypatch.setattr(host, "_kind_sums", recording_sums)
    monkeypatch.setattr(host, "time_onnx_interleaved", fake_timing)
    ctx = host.fit_context(table, repeats=7, rounds=3)
    assert calls == {"n": 18, "rounds": 3, "repeats": 7}
    assert len(ctx["measured_ms"]) == 18 and "median of 3 round-robin rounds" in ctx["fitted_on"]
    got = ctx["factors"]
    assert np.allclose([got[g] for g in known], list(known.values()), atol=1e-6), got
    assert ctx["overhead_per_op_ms"] == pytest.approx(per_op, abs=1e-9)
    assert table.meta["overhead_per_op_ms"] == ctx["overhead_per_op_ms"]
    assert ctx["fit_median_abs_error"] < 1e-6
    assert table.meta["context"] is ctx
    for model, truth in list(zip(models, expected, strict=True))[::5]:
        assert estimate_latency(model, (1, 1, 28, 28), table).total_ms == pytest.approx(truth, rel=1e-6)
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        host.fit_context(table, rounds=0)


def _with_int8(table: LatencyTable) -> LatencyTable:
    """The table with int8 entries for its weighted operators at 1.5x their fp32 time (in place of the shipped
    host table's measured ones: synthetic timings need known entries)."""
    int8 = {
        k.removesuffix("|fp32") + "|int8": {**e, "ms": 1.5 * e["ms"]}
        for k, e in table.entries.items()
        if k.split("|")[0] in ("conv", "depthwise", "linear") and k.endswith("|fp32")
    }
    return LatencyTable(json.loads(json.dumps(table.meta)), {**table.entries, **int8}, table.path)


def test_int8_context_fit_recovers_known_factors_holding_the_fp32_part(monkeypatch) -> None:
    """Synthetic timings of the calibration models with every weighted layer at int8, and with half of them,
    built from known int8 factors and a known cost per MB crossing a change of precision on top of the fp32
    fit's overheads and element-wise factor: the int8 fit returns them, stores them beside the fp32 context, and
    the estimator then reproduces the timings (a "(precision changes)" row where the graph changes precision)."""
    import numpy as np

    from edgecompress.latency_models import host
    from edgecompress.latency_models.estimate import dispatched_ops, precision_changes

    table = _with_int8(load_device("host"))
    known = {"conv": 1.3, "depthwise": 0.4}
    change = 0.25
    per_op = float(table.meta["overhead_per_op_ms"])
    expected, models = [], []
    real_sums = host._kind_sums

    def recording_sums(model, shape, tbl, precision=None):
        sums = real_sums(model, shape, tbl, precision)
        held = sum(tbl.meta["context"]["factors"][g] * v for g, v in sums.items() if "@" not in g)
        ops = trace_ops(model, shape)
        int8 = sum(known[g] * sums.get(f"{g}@int8", 0.0) for g in known)
        expected.append(tbl.overhead_ms + held + per_op * dispatched_ops(ops) + int8
                        + change * precision_changes(ops, precision)[1])  # fmt: skip
        models.append((model, precision))
        return sums

    def fake_timing(models_, feeds, threads, rounds, warmup, repeats, progress=None):
        return {label: [truth] * rounds for label, truth in zip(models_, expected, strict=True)}

    monkeypatch.setattr(host, "_kind_sums", recording_sums)
    monkeypatch.setattr(host, "time_onnx_interleaved", fake_timing)
    monkeypatch.setattr(host, "to_int8", lambda graph, x, layers=None: graph)  # the timings are synthetic
    fp32_factors = dict(table.meta["context"]["factors"])
    fit = host.fit_context(table, repeats=5, rounds=1, precision="int8")
    assert len(models) == 36  # 18 calibration models with every layer at int8, and with half of them
    assert np.allclose([fit["factors"][g] for g in known], list(known.values()), atol=1e-6), fit["factors"]
    assert fit["change_ms_per_mb"] == pytest.approx(change, rel=1e-6)
    assert fit["factors"]["eltwise"] == fp32_factors["eltwise"] and fit["fit_median_abs_error"] < 1e-6
    assert table.meta["context"]["by_precision"]["int8"] is fit and table.meta["context"]["factors"] == fp32_factors
    assert table.context_factor("conv_k3", "int8") == pytest.approx(1.3)
    assert table.context_factor("conv_k3") == fp32_factors["conv"]
    changes = []
    for (model, mapping), truth in list(zip(models, expected, strict=True))[::5]:
        report = estimate_latency(model, (1, 1, 28, 28), table, precision=mapping)
        assert report.total_ms == pytest.approx(truth, rel=1e-6)
        count, mb = precision_changes(trace_ops(model, (1, 1, 28, 28)), mapping)
        rows = [(r.ops, r.ms, r.source) for r in report.rows if r.layer == "(precision changes)"]
        assert [r[:2] for r in rows] == [(count, pytest.approx(change * mb))]
        assert "ms per MB converted, fitted with the table's int8 context" in rows[0][2]
        changes.append(count)
    assert min(changes) == 2 and max(changes) > 2  # every layer at int8: the input and the output only
    with pytest.raises(ValueError, match="context fits exist for fp32 and int8, not 'fp16'"):
        host.fit_context(table, precision="fp16")
    bare = LatencyTable({k: v for k, v in table.meta.items() if k != "context"}, table.entries)
    with pytest.raises(ValueError, match="fit the fp32 context first"):
        host.fit_context(bare, precision="int8")


def test_validate_table_int8_quantizes_and_prices_the_layers_it_says() -> None:
    from edgecompress.latency_models.host import validate_table

    table = _with_int8(load_device("host"))
    r = validate_table(table, models=("resnet20",), per_model=2, repeats=5, rounds=1, round_to=8, int8="mixed")
    assert r["n"] == 2 and r["int8"] == "mixed"
    assert all(row["missing"] == 0 and row["estimated_ms"] > 0 for row in r["rows"])
    with pytest.raises(ValueError, match="int8 must be None, 'all' or 'mixed', got 'half'"):
        validate_table(table, int8="half")


def test_to_int8_quantizes_the_named_layers_only() -> None:
    import onnx

    from edgecompress.latency_models.onnx import int8_selection, to_int8, to_onnx

    model = create_model("lenet5").eval()
    fp32 = to_onnx(model, (1, 1, 28, 28))
    quantized, floating, ops = int8_selection(fp32, ["conv2", "fc1"])
    assert sorted(n.split("/")[1] for n in quantized) == ["conv2", "fc1"] and "Add" not in ops
    assert sorted(n.split("/")[1] for n in floating) == ["conv1", "fc2", "fc3"]
    graph = onnx.load_from_string(to_int8(fp32, torch.randn(1, 1, 28, 28).numpy(), ["conv2", "fc1"])).graph
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert any("conv2" in w for w in dequantized) and not any("conv1" in w for w in dequantized)
    assert int8_selection(fp32, None)[1] == [] and "MaxPool" in int8_selection(fp32, None)[2]


def test_float_layers_of_a_mixed_int8_graph_read_float_constants(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An untrained ResNet-20's folded biases are equal, so the exporter stores them once and the quantizer
    quantizes the shared tensor for its int8 users: the float convolutions then read a DequantizeLinear (which
    costs ONNX Runtime its blocked kernels). Each float layer gets a float copy; the outputs stay within float
    rounding."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    import edgecompress.latency_models.profiler as profiler
    from edgecompress.latency_models.onnx import int8_selection, to_int8, to_onnx

    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    fp32 = to_onnx(model, (1, 1, 28, 28))
    x = torch.randn(1, 1, 28, 28).numpy()
    layers = ["layers.0.conv1", "layers.1.conv2", "layers.3.conv1", "layers.6.conv2"]
    floating = set(int8_selection(fp32, layers)[1])

    def float_reads_of_dequantized_constants(data: bytes) -> int:
        graph = onnx.load_from_string(data).graph
        consts = {t.name for t in graph.initializer}
        dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts}
        return sum(i in dq for n in graph.node if n.name in floating for i in n.input)

    fixed = to_int8(fp32, x, layers)
    with monkeypatch.context() as m:
        m.setattr(profiler, "unshare_float_constants", lambda data, nodes: (data, 0))
        shared = to_int8(fp32, x, layers)
    assert float_reads_of_dequantized_constants(shared) > 0
    assert float_reads_of_dequantized_constants(fixed) == 0
    assert profiler.unshare_float_constants(fixed, floating) == (fixed, 0)  # nothing left to copy
    run = [ort.InferenceSession(g, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0] for g in (shared, fixed)]
    assert np.allclose(run[0], run[1], rtol=1e-4, atol=1e-5)  # the blocked kernels sum in another order


def test_validate_table_compares_other_tables_on_the_same_measurements() -> None:
    from edgecompress.latency_models.devices import PROFILE_DIR
    from edgecompress.latency_models.host import validate_table

    table = LatencyTable.load(PROFILE_DIR / "host.table.json")
    assert table.channel_block == 16
    unblocked = LatencyTable({**table.meta, "channel_block": 1}, table.entries)
    doubled = LatencyTable(table.meta, {k: {**e, "ms": 2 * e["ms"]} for k, e in table.entries.items()})
    r = validate_table(
        table, models=("resnet20",), per_model=3, repeats=5, rounds=1, round_to=1,
        compare={"same": table, "unblocked": unblocked, "doubled": doubled},
    )  # fmt: skip
    assert r["n"] == 3 and set(r["compare"]) == {"same", "unblocked", "doubled"}
    assert r["compare"]["same"]["median_abs_error"] == pytest.approx(r["median_abs_error"])
    for row in r["rows"]:
        assert row["estimated_ms[same]"] == pytest.approx(row["estimated_ms"])
        assert row["estimated_ms[doubled]"] > row["estimated_ms"]
    # Unrounded random widths: somewhere the block changes the prediction.
    assert any(row["estimated_ms[unblocked]"] != pytest.approx(row["estimated_ms"]) for row in r["rows"])


def test_gpu_runtimes_are_refused_where_they_cannot_run(tmp_path, capsys) -> None:
    """A Jetson's GPU runtimes profile there; here (no onnxruntime-gpu) they are refused before any work, with
    what is missing. profiler.open_session says the same."""
    from edgecompress.cli import main

    if "onnxruntime-cuda" in profiler.available_runtimes():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(SystemExit) as done:
        main(["profile", "--out", str(tmp_path / "t.json"), "--runtime", "onnxruntime-cuda", "--model", "lenet5"])
    assert done.value.code == 2 and not (tmp_path / "t.json").exists()
    err = " ".join(capsys.readouterr().err.split())
    assert "--runtime onnxruntime-cuda cannot run on this machine: this onnxruntime" in err
    assert "has no CUDAExecutionProvider" in err and "install onnxruntime-gpu" in err
    with pytest.raises(RuntimeError, match="cannot run a model with onnxruntime-tensorrt: .*TensorrtExecutionProvider"):
        profiler.open_session(b"", "onnxruntime-tensorrt")
    assert "onnxruntime" in profiler.available_runtimes() and "litert" in profiler.available_runtimes()


def test_tensorrt_is_allowed_the_precision_of_the_file(tmp_path) -> None:
    """TensorRT builds fp32 kernels unless a builder flag allows lower precision: an fp16 file gets
    trt_fp16_enable, a QDQ int8 file trt_int8_enable, an fp32 file neither (read from the file, bytes or path)."""
    module, x = profiler.build_op(profiler.parse_key("conv|4|8|3|1|1|8|8|fp32"))
    fp32 = profiler._export(module, x)
    assert profiler.tensorrt_options(fp32) == {}
    assert profiler.tensorrt_options(profiler._to_fp16(fp32)) == {"trt_fp16_enable": "True"}
    assert profiler.tensorrt_options(profiler._to_fp16(fp32, keep_io_types=False)) == {"trt_fp16_enable": "True"}
    (tmp_path / "q.onnx").write_bytes(profiler.quantize_qdq(fp32, x))
    assert profiler.tensorrt_options(str(tmp_path / "q.onnx")) == {"trt_int8_enable": "True"}
    pool, px = profiler.build_op(profiler.parse_key("pool-global|8|8|0|0|1|7|7|fp32"))  # no initializer at all
    assert profiler.tensorrt_options(profiler._to_fp16(profiler._export(pool, px), keep_io_types=False)) == {
        "trt_fp16_enable": "True"
    }
    assert profiler.tensorrt_options(profiler._to_fp16(profiler._export(pool, px))) == {"trt_fp16_enable": "True"}


def test_tensorrt_sessions_get_the_flags_and_int8_files_are_symmetric(monkeypatch) -> None:
    """A TensorRT session is asked for with its file's flags (what onnxruntime receives is captured here: no
    TensorRT on this machine), and the profiler quantizes int8 operators for TensorRT with zero-point-0 int8
    activations, the only kind TensorRT takes."""
    import onnx
    import onnxruntime as ort

    module, x = profiler.build_op(profiler.parse_key("conv|4|8|3|1|1|8|8|fp32"))
    fp32 = profiler._export(module, x)
    symmetric = onnx.load_from_string(profiler.quantize_qdq(fp32, x, symmetric=True))
    points = {t.name: t for t in symmetric.graph.initializer if t.name.endswith("zero_point")}
    activations = [points["x_zero_point"], points["logits_zero_point"]]  # the graph's input and output
    assert all(t.data_type == onnx.TensorProto.INT8 for t in activations)
    assert all(not onnx.numpy_helper.to_array(t).any() for t in points.values())  # every zero point is 0
    asymmetric = onnx.load_from_string(profiler.quantize_qdq(fp32, x))
    assert {t.data_type for t in asymmetric.graph.initializer if t.name == "x_zero_point"} == {onnx.TensorProto.UINT8}
    asked: list[object] = []

    class Capture(ort.InferenceSession):  # type: ignore[misc]
        def __init__(self, model, options=None, providers=None, **kwargs) -> None:  # type: ignore[no-untyped-def]
            asked.append(providers)
            super().__init__(model, options, providers=["CPUExecutionProvider"], **kwargs)

        def get_providers(self):  # type: ignore[no-untyped-def]
            return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", Capture)
    monkeypatch.setattr(profiler, "runtime_missing", lambda runtime: None)
    session = profiler.open_session(profiler._to_fp16(fp32), "onnxruntime-tensorrt", 1)
    assert asked[-1] == [("TensorrtExecutionProvider", {"trt_fp16_enable": "True"}), "CUDAExecutionProvider",
                         "CPUExecutionProvider"]  # fmt: skip
    assert session.provider_options == {"trt_fp16_enable": "True"}


def test_a_table_timed_another_way_is_not_extended(tmp_path) -> None:
    """fp16 operators were timed with a Cast at each end before 2026-12-04 and float16 in and out since; a table
    of the old kind (no ``fp16_io`` in its meta) is not extended with fp16 entries, which would mix the two.
    fp32 entries may still be added to it."""
    out = tmp_path / "t.json"
    profiler.run(["conv|4|8|3|1|1|8|8|fp16"], out, threads=1, warmup=1, repeats=2)
    doc = json.loads(out.read_text())
    assert doc["meta"]["fp16_io"] == "float16" and doc["meta"]["provider"] == "CPUExecutionProvider"
    del doc["meta"]["fp16_io"]
    out.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="was measured with fp16_io=None, this run has 'float16'; write to another"):
        profiler.run(["add|4|4|1|1|1|8|8|fp32"], out, threads=1, warmup=1, repeats=2)
    doc["entries"] = {}
    out.write_text(json.dumps(doc))
    table = profiler.run(["add|4|4|1|1|1|8|8|fp32"], out, threads=1, warmup=1, repeats=2)
    assert set(table["entries"]) == {"add|4|4|1|1|1|8|8|fp32"}


def test_provider_names_the_onnxruntime_runtime(tmp_path, capsys) -> None:
    """--provider cpu|cuda|tensorrt is --runtime onnxruntime[-cuda|-tensorrt]; the two must agree."""
    from edgecompress.cli import main

    assert profiler.runtime_for(None, "cuda") == "onnxruntime-cuda"
    assert profiler.runtime_for("onnxruntime-tensorrt", "tensorrt") == "onnxruntime-tensorrt"
    assert profiler.runtime_for(None, None) == "onnxruntime" and profiler.runtime_for("litert", None) == "litert"
    with pytest.raises(ValueError, match="^--provider cuda is --runtime onnxruntime-cuda, not --runtime litert$"):
        profiler.runtime_for("litert", "cuda")
    with pytest.raises(SystemExit) as done:
        profiler.main(["plan.json", "--out", str(tmp_path / "t.json"), "--provider", "cpu", "--runtime", "litert"])
    assert done.value.code == "--provider cpu is --runtime onnxruntime, not --runtime litert"
    with pytest.raises(SystemExit) as done:
        main(["profile", "--out", str(tmp_path / "t.json"), "--provider", "gpu", "--model", "lenet5"])
    assert done.value.code == 2 and not (tmp_path / "t.json").exists()
    assert "--provider 'gpu' is not one of: cpu, cuda, tensorrt" in " ".join(capsys.readouterr().err.split())
    if "onnxruntime-cuda" not in profiler.available_runtimes():
        with pytest.raises(SystemExit) as done:
            main(["profile", "--out", str(tmp_path / "t.json"), "--provider", "cuda", "--model", "lenet5"])
        assert "--runtime onnxruntime-cuda cannot run on this machine" in " ".join(capsys.readouterr().err.split())
        plan = tmp_path / "plan.json"  # on the device: profiler.py says what is missing in one line
        plan.write_text(json.dumps({"format": profiler.PLAN_FORMAT, "keys": ["conv|4|8|3|1|1|8|8|fp16"]}))
        with pytest.raises(SystemExit) as done:
            profiler.main([str(plan), "--provider", "cuda", "--out", str(tmp_path / "t.json")])
        assert str(done.value.code).startswith("profiler.py: cannot profile with runtime onnxruntime-cuda: ")
        assert not (tmp_path / "t.json").exists()


def test_a_gpu_session_that_fell_back_to_the_cpu_is_refused(monkeypatch) -> None:
    """onnxruntime-gpu lists the CUDA provider on a machine where CUDA cannot start, then runs the session on the
    CPU; a time taken from that session would be filed as the GPU's. Here the CPU build is made to list CUDA, as
    onnxruntime-gpu does: the real runtime starts a session on the CPU, so the runtime is not available, and a
    session that starts on the CPU anyway is refused."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider (the GPU tests below run instead)")
    listed = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *listed])
    module, x = profiler.build_op(profiler.parse_key("conv|4|8|3|1|1|8|8|fp32"))
    fell_back = f"onnxruntime {ort.__version__} lists CUDAExecutionProvider but started a session on CPUExecution"
    missing = profiler.runtime_missing("onnxruntime-cuda")
    assert missing is not None and missing.startswith(fell_back)
    assert "onnxruntime-cuda" not in profiler.available_runtimes()
    monkeypatch.setattr(profiler, "runtime_missing", lambda runtime: None)  # a session that starts anyway
    with pytest.raises(RuntimeError, match=f"^cannot run a model with onnxruntime-cuda: {fell_back}"):
        profiler.open_session(profiler._export(module, x), "onnxruntime-cuda")
    assert profiler.open_session(profiler._export(module, x)).providers == ["CPUExecutionProvider"]


def test_device_call_runs_the_session_on_bound_inputs_and_outputs() -> None:
    """The GPU timing loop binds the input once and leaves outputs on the device; on the CPU provider the same
    binding computes what a plain run computes."""
    import numpy as np

    module, x = profiler.build_op(profiler.parse_key("conv|4|8|3|1|1|8|8|fp32"))
    session = profiler.open_session(profiler._export(module, x), "onnxruntime", 1)
    call = session.device_call(session.feed(x), "cpu")
    (out,) = call().copy_outputs_to_cpu()
    assert out.shape == (1, 8, 8, 8) and np.allclose(out, session.run(x))


GPU = pytest.mark.skipif(
    "onnxruntime-cuda" not in profiler.available_runtimes(), reason="needs onnxruntime-gpu and a CUDA GPU"
)


@GPU
def test_cuda_provider_profiles_operators_on_the_gpu(tmp_path) -> None:
    """The profiler's GPU path on a real GPU: fp32, fp16 and int8 operators timed with the CUDA provider, the
    table recording provider, GPU and how inputs were placed; the GPU computes what the CPU computes."""
    import numpy as np

    keys = [
        "conv|16|32|3|1|1|56|56|fp32", "conv|16|32|3|1|1|56|56|fp16", "conv|16|32|3|1|1|56|56|int8",
        "depthwise|32|32|3|1|32|56|56|fp16", "add|32|32|1|1|1|56|56|fp32", "pool-global|64|64|7|7|1|7|7|fp32",
    ]  # fmt: skip
    table = profiler.run(keys, tmp_path / "gpu.json", runtime="onnxruntime-cuda", threads=1, warmup=5, repeats=20)
    meta = table["meta"]
    assert meta["runtime"] == "onnxruntime-cuda" and meta["provider"] == "CUDAExecutionProvider"
    assert meta["gpu"] == torch.cuda.get_device_name(0) and meta["io"] == profiler.GPU_IO
    assert set(table["entries"]) == set(keys) and all(e["ms"] > 0 for e in table["entries"].values())
    assert LatencyTable.load(tmp_path / "gpu.json").meta["runtime"] == "onnxruntime-cuda"
    module, x = profiler.build_op(profiler.parse_key(keys[0]))
    model = profiler._export(module, x)
    gpu = profiler.open_session(model, "onnxruntime-cuda", 1)
    assert gpu.providers[0] == "CUDAExecutionProvider"
    cpu = profiler.open_session(model, "onnxruntime", 1)
    assert np.allclose(gpu.run(x), cpu.run(x), rtol=1e-3, atol=1e-3)
    (bound,) = gpu.device_call(gpu.feed(x))().copy_outputs_to_cpu()
    assert np.allclose(bound, cpu.run(x), rtol=1e-3, atol=1e-3)
    assert profiler.time_model(model, x, 1, 5, 20, runtime="onnxruntime-cuda") > 0


@GPU
def test_tensorrt_runs_on_tensorrt_or_is_refused() -> None:
    """onnxruntime-gpu lists the TensorRT provider whether or not TensorRT's libraries are installed; without
    them a session starts on CUDA, and the TensorRT runtime is refused instead of timing CUDA."""
    module, x = profiler.build_op(profiler.parse_key("conv|4|8|3|1|1|8|8|fp32"))
    missing = profiler.runtime_missing("onnxruntime-tensorrt")
    if missing is None:
        assert profiler.open_session(profiler._export(module, x), "onnxruntime-tensorrt", 1).providers[0] == (
            "TensorrtExecutionProvider"
        )
    else:
        assert "lists TensorrtExecutionProvider but started a session on CUDAExecutionProvider" in missing
        with pytest.raises(RuntimeError, match="cannot run a model with onnxruntime-tensorrt: onnxruntime"):
            profiler.open_session(profiler._export(module, x), "onnxruntime-tensorrt", 1)


def test_a_file_xnnpack_refuses_runs_on_litert_builtin_kernels_and_says_so(monkeypatch) -> None:
    """Some int8 files make LiteRT's default XNNPACK delegate fail to prepare (seen on a searched MobileNetV2-0.5);
    the session then runs LiteRT's built-in kernels and says why and what to do on the device."""
    from ai_edge_litert import interpreter as lite

    from edgecompress.latency_models.litert import to_tflite

    data, _ = to_tflite(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval(), (1, 1, 8, 8))
    made: list[object] = []

    class Refusing(lite.Interpreter):  # type: ignore[misc]
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            self.refuse = "experimental_op_resolver_type" not in kwargs
            made.append(kwargs.get("experimental_op_resolver_type"))

        def allocate_tensors(self):  # type: ignore[no-untyped-def]
            if self.refuse:
                raise RuntimeError("failed to create XNNPACK runtimeNode number 3 (TfLiteXNNPackDelegate) failed")
            return super().allocate_tensors()

    Refusing.__module__ = lite.__name__
    monkeypatch.setattr(profiler, "_litert_interpreter", lambda: Refusing)
    session = profiler.open_session(data, "litert", 1)
    assert made == [None, lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES]
    assert session.kernels.startswith("LiteRT built-in kernels: the default XNNPACK delegate refused this file")
    assert "BUILTIN_WITHOUT_DEFAULT_DELEGATES" in session.kernels
    assert session.run(torch.randn(2, 1, 8, 8)).shape == (2, 4, 6, 6)


def test_int8_graphs_run_every_convolution_as_qlinearconv(tmp_path) -> None:
    """The quantizer works on the pre-processed graph (shapes inferred): ONNX Runtime then fuses each
    Dequantize-Conv-Quantize of a QDQ ResNet-20 into one QLinearConv. Without the pre-processing it fused 3 of
    21 and ran the others as float convolutions between Q/DQ pairs."""
    import collections

    import onnx
    import onnxruntime as ort

    from edgecompress.latency_models.onnx import to_int8, to_onnx

    int8 = to_int8(to_onnx(create_model("resnet20").eval(), (1, 1, 28, 28)), torch.randn(1, 1, 28, 28).numpy())
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    assert ops["QLinearConv"] == 21 and ops["Conv"] == 0 and ops["FusedConv"] == 0, ops


def test_profile_fits_the_int8_context_when_it_measured_int8(monkeypatch, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`edgecompress profile --precision int8` fits the fp32 context, then the int8 one (factors and the cost of
    precision changes) on the same table, and says what it fitted."""
    from edgecompress.cli import main
    from edgecompress.latency_models import host

    out = tmp_path / "t.json"
    monkeypatch.setattr(profiler, "run", lambda keys, path, **kw: _with_int8(load_device("host")).save(path))
    fits = []

    def fake_fit(table, progress=None, precision="fp32", rounds=3):  # type: ignore[no-untyped-def]
        fits.append(precision)
        assert rounds == (7 if precision == "int8" else 3)
        return {"factors": {"conv": 1.0}, "fitted_on": f"fake {precision}", "change_ms_per_mb": 0.125}

    monkeypatch.setattr(host, "fit_context", fake_fit)
    with pytest.raises(SystemExit) as done:
        main(["profile", "--out", str(out), "--model", "lenet5", "--precision", "fp32", "--precision", "int8"])
    assert done.value.code == 0 and fits == ["fp32", "int8"]
    text = " ".join(capsys.readouterr().out.split())
    assert "0.125 ms per MB crossing a change of precision (fake int8)" in text
    fits.clear()
    host_table = load_device("host")
    fp32_only = LatencyTable(host_table.meta, {k: e for k, e in host_table.entries.items() if k.endswith("|fp32")})
    monkeypatch.setattr(profiler, "run", lambda keys, path, **kw: fp32_only.save(path))
    with pytest.raises(SystemExit) as done:
        main(["profile", "--out", str(tmp_path / "fp32.json"), "--model", "lenet5"])
    assert done.value.code == 0 and fits == ["fp32"]
