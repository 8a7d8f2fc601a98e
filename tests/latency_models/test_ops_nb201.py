from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgecompress import Policy, compress
from edgecompress.errors import EdgeCompressError
from edgecompress.latency_models.device_model import group_features, is_constant_network, nb201_features
from edgecompress.latency_models.nb201 import NB201Network, live_edges, parse_arch
from edgecompress.latency_models.ops import op_kind_features, trace_ops
from edgecompress.models import create_model


def test_resnet20_operators() -> None:
    ops = trace_ops(create_model("resnet20"), (1, 1, 28, 28))
    kinds = op_kind_features(ops)
    assert {k: int(v["count"]) for k, v in kinds.items()} == {
        "conv_k3": 19,
        "conv_k1": 2,
        "add": 9,
        "pool": 1,
        "linear": 1,
    }
    assert kinds["conv_k3"]["mmacs"] * 1e6 + kinds["conv_k1"]["mmacs"] * 1e6 + 640 == pytest.approx(31_021_952)
    assert ops[0].layer == "conv1" and ops[3].kind == "add" and ops[3].layer == ""
    assert ops[0].bytes == 4 * (28 * 28 + 16 * 28 * 28 + 144)


def test_compressed_model_traced_as_deployed_and_left_intact() -> None:
    model = create_model("resnet20")
    small, _ = compress(
        model, Policy.uniform(model, keep=0.5, sparsity=0.5, wbits=4, abits=8), [torch.randn(4, 1, 28, 28)],
        input_shape=(1, 1, 28, 28),
    )  # fmt: skip
    x = torch.randn(2, 1, 28, 28)
    before = small(x)
    kinds = op_kind_features(trace_ops(small, (1, 1, 28, 28)))
    assert "mul" not in kinds  # masks and fake quantizers are not operators
    assert int(kinds["conv_k3"]["count"]) == 19
    assert torch.equal(small(x), before)  # tracing used a copy


def test_parse_arch_errors() -> None:
    with pytest.raises(ValueError, match="unknown NAS-Bench-201 op 'conv_5x5'"):
        parse_arch("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(ValueError, match="a cell has 3 computed nodes, got 2"):
        parse_arch("|none~0|+|none~0|none~1|")


def test_live_edges_fold_dead_and_none() -> None:
    arch = "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"
    # node 2 only gets none edges: it is constant, and so is anything computed from it.
    assert live_edges(parse_arch(arch)) == [[("nor_conv_3x3", 0)], [], [("skip_connect", 0), ("nor_conv_1x1", 1)]]
    dead = "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|none~2|"
    assert is_constant_network(dead) and not is_constant_network(arch)
    assert all(v == 0 for v in nb201_features(dead).values())
    # Without constant folding (TensorRT via torch2trt) only unused layers go: node 2 is zero, yet the
    # conv on it runs; the dead network still runs its stem, reductions and head.
    assert live_edges(parse_arch(arch), fold_constants=False) == [
        [("nor_conv_3x3", 0)],
        [],
        [("skip_connect", 0), ("nor_conv_1x1", 1)],
    ]
    zero_input = "|none~0|+|nor_conv_3x3~1|none~1|+|none~0|none~1|nor_conv_1x1~2|"
    assert live_edges(parse_arch(zero_input)) == [[], [], []]
    unfolded = live_edges(parse_arch(zero_input), fold_constants=False)
    assert unfolded == [[], [("nor_conv_3x3", 1)], [("nor_conv_1x1", 2)]]
    assert not is_constant_network(dead, "none")
    assert nb201_features(dead, "none")["conv_k3.count"] == 5  # stem + two convs per reduction


def test_output_folding_compiles_only_constant_networks_away() -> None:
    """``output``: a network with a constant output is gone, as under ``all``; inside any other network the
    layers on an all-zero node still run, as under ``none``."""
    dead = "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|none~2|"
    assert is_constant_network(dead, "output")
    assert all(v == 0 for v in nb201_features(dead, "output").values())
    on_zero = "|none~0|+|nor_conv_3x3~1|skip_connect~0|+|none~0|none~1|nor_conv_1x1~2|"  # conv3x3 reads a zero node
    assert not is_constant_network(on_zero, "output")
    assert nb201_features(on_zero, "output") == nb201_features(on_zero, "none")
    assert nb201_features(on_zero, "output")["conv_k3.count"] == nb201_features(on_zero, "all")["conv_k3.count"] + 15
    with pytest.raises(EdgeCompressError, match="folding 'some' is not one of: all, output, none"):
        nb201_features(on_zero, "some")


@pytest.mark.parametrize(
    "arch",
    [
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
        "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
        "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|nor_conv_1x1~1|none~2|",
        # siblings and repeated poolings: from node 0 three 3x3 convolutions, from node 1 two poolings
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|nor_conv_3x3~0|avg_pool_3x3~1|nor_conv_1x1~2|",
        # node 1 has no live input: without folding both of its edges read one all-zero tensor
        "|none~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|",
        # a node whose only edge is a skip is the tensor it skips from: its edges are siblings of that node's
        "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|",
        "|skip_connect~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|skip_connect~2|",
        "|nor_conv_1x1~0|+|none~0|skip_connect~1|+|nor_conv_1x1~0|nor_conv_1x1~1|nor_conv_1x1~2|",
        "|none~0|+|none~0|skip_connect~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    ],
)
@pytest.mark.parametrize("folding", ["all", "output", "none"])
@pytest.mark.parametrize(
    ("merges", "fusions"),
    [
        ((), ()),
        (("merge_conv", "merge_pool"), ()),
        ((), ("act", "fuse_add")),
        ((), ("act",)),
        (("merge_conv", "merge_pool"), ("act", "fuse_add")),  # the TX2's choice
    ],
)
def test_feature_decomposition_equals_tracing_the_whole_network(
    arch: str, folding: str, merges: tuple, fusions: tuple
) -> None:
    net = NB201Network(arch, fold_constants=folding == "all")
    direct = group_features(trace_ops(net, (1, 3, 32, 32)), merges=merges, fusions=fusions)
    fast = nb201_features(arch, folding, merges, fusions)
    if is_constant_network(arch, folding):
        assert all(v == 0 for v in fast.values())
        return
    assert direct.keys() == fast.keys()
    assert all(fast[k] == pytest.approx(direct[k], abs=1e-9) for k in direct)


def test_feature_decomposition_without_folding_runs_layers_on_zero_nodes() -> None:
    arch = "|none~0|+|nor_conv_3x3~1|none~1|+|none~0|none~1|nor_conv_1x1~2|"  # constant where folded
    direct = group_features(trace_ops(NB201Network(arch, fold_constants=False), (1, 3, 32, 32)))
    fast = nb201_features(arch, "none")
    assert all(fast[k] == pytest.approx(direct[k], abs=1e-9) for k in direct)
    assert fast["conv_k1.count"] == direct["conv_k1.count"] == 15 + 2 + 1  # cells, reduction shortcuts, classifier


def test_nb201_network_runs() -> None:
    net = NB201Network(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    )
    assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_channel_shuffle_and_a_concat_do_not_vanish() -> None:
    """A channel shuffle's transpose made contiguous copies every element, and a concatenation copies its inputs:
    traced as operators, priced by the device models as memory-bound (flagged as extrapolated), and listed as
    missing by a table that has no entry for them; a view of a contiguous tensor stays free."""
    import torch.nn as nn

    from edgecompress.latency_models import estimate_latency
    from edgecompress.latency_models.devices import load_device

    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(16, 16, 1), nn.Conv2d(32, 16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x)
            n, c, h, w = x.shape
            x = x.view(n, 4, c // 4, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
            return self.b(torch.cat([x, x], 1))

    ops = trace_ops(Shuffle(), (1, 16, 28, 28))
    assert [(o.kind, o.detail) for o in ops] == [("conv_k1", ""), ("copy", "contiguous"), ("concat", ""),
                                                 ("conv_k1", "")]  # fmt: skip
    assert ops[1].bytes == 4 * 2 * 16 * 28 * 28 and ops[2].bytes == 4 * 2 * 32 * 28 * 28
    pi4 = estimate_latency(Shuffle(), (1, 16, 28, 28), "raspberry-pi-4")
    moved = {r.kinds: r for r in pi4.rows}["concat,copy"]
    # A concat is extrapolated; a copy too, unless the profile prices copies on their own (the FBNet selection
    # decides whether the Pi 4 does, by cross-validation).
    own = "copy" in load_device("raspberry-pi-4").extra_groups
    assert moved.ms > 0 and moved.source == (
        "device model raspberry-pi-4 + device model raspberry-pi-4 (extrapolated)"
        if own
        else "device model raspberry-pi-4 (extrapolated)"
    )
    assert any(w.startswith("concat operators are extrapolated") for w in pi4.warnings)
    nano = estimate_latency(Shuffle(), (1, 16, 28, 28), "jetson-nano")
    # The concat moves more bytes than any calibration operator: that part at the Nano's roofline.
    assert {r.kinds: r for r in nano.rows}["concat,copy"].source == (
        "device model jetson-nano (extrapolated) + device model jetson-nano (extrapolated) (beyond the calibration "
        "range: roofline)"
    )
    assert any(w.startswith("copy operators are extrapolated: a copying reshape or transpose") for w in nano.warnings)
    host = estimate_latency(Shuffle(), (1, 16, 28, 28), "host")
    assert "concat:" in host.missing and "copy:contiguous" in host.missing


def test_tracer_marks_sibling_convolutions_and_repeated_poolings() -> None:
    """What a GPU compiler merges: convolutions on the same input value (the same ReLU of one tensor) with the
    same geometry, and a pooling that repeats an earlier one on the same tensor."""

    class Branches(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 16, 3, padding=1)  # a sibling of a: same input value and geometry
            self.c = torch.nn.Conv2d(8, 8, 1)  # another kernel
            self.d = torch.nn.Conv2d(8, 8, 3, padding=1)  # reads x, not relu(x)
            self.e = torch.nn.Conv2d(8, 8, 3, padding=1, stride=2)  # another stride
            self.p = torch.nn.AvgPool2d(3, 1, 1)
            self.m = torch.nn.MaxPool2d(3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(x)
            outs = [self.a(torch.relu(x)), self.b(y), self.c(y), self.d(x), self.e(y)]
            outs += [self.p(x), self.p(x), self.m(x), self.p(y)]
            return sum(o.mean() for o in outs)

    ops = trace_ops(Branches(), (1, 8, 8, 8))
    assert [(op.kind, op.merged) for op in ops if op.kind != "add"] == [
        ("conv_k3", ""), ("conv_k3", "conv"), ("conv_k1", ""), ("conv_k3", ""), ("conv_k3", ""),
        ("pool", ""), ("pool", "pool"), ("pool", ""), ("pool", ""),
    ]  # fmt: skip
    feats = group_features(ops, merges=("merge_conv", "merge_pool"))
    assert feats["merge_conv.count"] == 1 and feats["merge_pool.count"] == 1
    assert feats["conv_k3.count"] == 3 and feats["pool.count"] == 3  # the merged ones left their groups
    assert not any(op.merged for op in trace_ops(create_model("resnet20"), (1, 1, 28, 28)))

    class InPlace(torch.nn.Module):  # the second convolution reads x after x += ...: another value
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            x += y
            return self.b(x)

    assert [op.merged for op in trace_ops(InPlace(), (1, 8, 8, 8)) if op.kind == "conv_k3"] == ["", ""]

    class Different(torch.nn.Module):  # other strides, other activations: not siblings
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(8, 8, 3, (2, 1), 1), torch.nn.Conv2d(8, 8, 3, (2, 2), 1)
            self.c, self.d = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs = [self.a(x), self.b(x), self.c(F.hardtanh(x, -1.0, 1.0)), self.d(F.hardtanh(x, 0.0, 6.0))]
            return sum(o.mean() for o in outs)

    assert not any(op.merged for op in trace_ops(Different(), (1, 8, 8, 8)))


class _Branches(torch.nn.Module):
    """conv1 -> ReLU -> conv2, a residual add of both, a concat of the sum and conv2's output, conv3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv1(x))
        b = self.conv2(a)
        return self.conv3(torch.cat([a + b, b], 1))  # type: ignore[no-any-return]


def test_tracer_records_what_each_operator_reads_and_where_precision_changes() -> None:
    from edgecompress.latency_models.estimate import precision_changes

    ops = trace_ops(_Branches(), (1, 1, 8, 8))
    assert [(op.kind, op.inputs) for op in ops] == [
        ("conv_k3", (-1,)), ("conv_k3", (0,)), ("add", (0, 1)), ("concat", (2, 1)), ("conv_k1", (3,)),
    ]  # fmt: skip
    # conv2 alone at int8: it reads conv1's output (256 values), the add and the concat read its output
    assert precision_changes(ops, {"conv2": "int8"}) == (3, pytest.approx(3 * 256 * 4 / 1e6))
    # every layer at int8: the add is quantized with them, the concat is not; the input and the output change
    assert precision_changes(ops, "int8") == (5, pytest.approx((64 + 256 + 256 + 512 + 128) * 4 / 1e6))
    assert precision_changes(ops, "fp32") == (0, 0.0)


def test_tracer_marks_standalone_activations_and_adds_fused_into_a_convolution() -> None:
    """TensorRT's fusions, where a tensor has one reader: an activation fuses into the convolution or add that
    made its input; an add fuses into a convolution that made an operand (one add per convolution)."""

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = (torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(3))
            self.d = torch.nn.Conv2d(8, 8, 1)
            self.p = torch.nn.AvgPool2d(3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)  # read by a ReLU and by a pooling: the ReLU cannot fuse into a
            y = self.b(torch.relu(h)) + self.p(h)  # the add fuses into b (b's output has no other reader)
            z = torch.relu(y)  # one ReLU on the add's output, nothing else reads it: fused
            u = self.c(z) + self.d(z)  # fuses into c only (one add per convolution)
            w = self.p(u) + self.p(x)  # two poolings: nothing to fuse into
            return self.d(torch.relu(w)) + self.c(torch.relu(w))  # two ReLUs on w: both standalone

    ops = trace_ops(Graph(), (1, 8, 8, 8))
    assert [(op.kind, op.acts, op.fused) for op in ops] == [
        ("conv_k3", 0, ""), ("conv_k3", 1, ""), ("pool", 0, ""), ("add", 0, "conv"),
        ("conv_k3", 0, ""), ("conv_k1", 0, ""), ("add", 0, "conv"),
        ("pool", 0, ""), ("pool", 0, ""), ("add", 0, ""),
        ("conv_k1", 1, ""), ("conv_k3", 1, ""), ("add", 0, "conv"),
    ]  # fmt: skip
    assert ops[1].act_bytes == 2 * 4 * 8 * 8 * 8  # reads and writes one 8x8x8 fp32 tensor
    feats = group_features(ops, fusions=("act", "fuse_add"))
    assert feats["fuse_add.count"] == 3 and feats["add.count"] == 1 + 3  # one unfused add, three activations
    assert group_features(ops)["add.count"] == 4 and "fuse_add.count" not in group_features(ops)
    # Networks built the usual way (conv-BN-ReLU, residual add then ReLU) have nothing standalone.
    for name, shape in (("resnet20", (1, 1, 28, 28)), ("mobilenetv2-0.5", (1, 3, 32, 32))):
        traced = trace_ops(create_model(name, **({"in_channels": 3} if "mobile" in name else {})), shape)
        adds = [op for op in traced if op.kind == "add"]
        assert sum(op.acts for op in traced) == 0 and adds and all(op.fused == "conv" for op in adds)


def test_fusions_see_every_reader_of_a_tensor() -> None:
    """A split (chunk) reads what made its input, a model output reads what made it, and an activation nothing
    reads is counted on the operator that made its input; tracing twice gives the same answer."""

    class Split(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.d = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Conv2d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            h = self.c(x)
            return self.d(h.chunk(2, 1)[0]), h + x  # h has two readers: the add cannot fuse into c

    class Returned(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.p = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.AvgPool2d(3, 1, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            h = self.c(x)
            return h, h + x, torch.relu(self.p(x))  # h is an output too; the ReLU on a pooling is read by none

    assert [(op.kind, op.fused) for op in trace_ops(Split(), (1, 4, 8, 8))] == [
        ("conv_k3", ""), ("conv_k1", ""), ("add", ""),
    ]  # fmt: skip
    assert [(op.kind, op.fused, op.acts) for op in trace_ops(Returned(), (1, 4, 8, 8))] == [
        ("conv_k3", "", 0), ("add", "", 0), ("pool", "", 1),
    ]  # fmt: skip
    import torchvision

    shuffle = torchvision.models.shufflenet_v2_x0_5()
    runs = [[(op.kind, op.acts, op.fused, op.inputs) for op in trace_ops(shuffle, (1, 3, 64, 64))] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
