"""Latency-model figures: device models on the public holdout rows, and the host table vs measurement.

    python benchmarks/latency_models.py                 # refits, re-profiles this machine, validates
    python benchmarks/latency_models.py --reuse-table   # refits; validates the shipped host table as it is
    python benchmarks/latency_models.py --int8 --no-device-models   # re-profiles with int8 entries, validates
    python benchmarks/latency_models.py --reuse-table --int8 --no-device-models   # validates the shipped table

1. Refit every public device model on the calibration rows (`edgecompress latency
   calibrate`) and report holdout Spearman / Kendall / MAPE next to the FLOPs ranking.
2. Profile this machine (`host`): every operator signature reachable from lenet5,
   resnet20, mobilenetv2 and mobilenetv2-0.5 in ONNX Runtime (1 thread, median), fit the in-graph
   context factors on fixed calibration models, then compare the table's sum with
   measured end-to-end latency of random compressed models (channels rounded to 8
   and to 16), and of random models with unrounded channels (to show what odd
   widths cost). Absolute error and the error of the predicted speed-up over the
   unchanged model, which is timed in the same round-robin rounds.

3. With ``--int8``: profile the int8 (QDQ) entries of the same weighted operators (those missing), fit their
   in-graph factors on the calibration models quantized, and validate on random compressed models with every
   layer at int8 and with a random half of their layers at int8 (both stored in the table's metadata).

Writes the profiles under edgecompress/latency_models/profiles/ (with ``--table PATH``, the host table there
instead: the shipped one is left as it is) and
benchmarks/results/latency_models__host-<N>thread[-reuse-table].json (the profile is ``host`` at 1 thread,
the count whose timings hold on a 2-core VM, else ``host-Nthread``; before 2026-12-04 ``host`` was the 2-thread
table and its results were latency_models__host*.json). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result

from edgecompress._progress import make_console
from edgecompress.latency_models import calibrate, profiler
from edgecompress.latency_models.devices import PROFILE_DIR
from edgecompress.latency_models.host import fit_context, validate_table
from edgecompress.latency_models.ops import trace_ops
from edgecompress.latency_models.table import LatencyTable, reachable_keys
from edgecompress.models import create_model

console = make_console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-model", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="1: the shipped `host`; N: `host-Nthread`")
    parser.add_argument("--passes", type=int, default=3, help="profiling passes over all signatures (median)")
    parser.add_argument("--reuse-table", action="store_true", help="validate the shipped host table, no re-profiling")
    parser.add_argument(
        "--record",
        action="store_true",
        help="with --reuse-table: add this pass's figures to the table's record of validation passes "
        "(meta.validation_passes, which `edgecompress devices` summarises); a re-profiled table always records",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="round-robin rounds (a new session each) of the context fits and "
        "validations; each model's median over rounds counts",
    )
    parser.add_argument("--int8", action="store_true", help="add int8 entries (kept when present) and validate them")
    parser.add_argument("--no-device-models", action="store_true", help="skip refitting the public device models")
    parser.add_argument(
        "--table", default=None, help="profile into this file instead of the shipped profile (which stays as it is)"
    )
    parser.add_argument(
        "--out", default=None, help="default: benchmarks/results/latency_models__host-<N>thread[-reuse-table].json"
    )
    args = parser.parse_args()
    if args.out is None:
        variant = f"host-{args.threads}thread"
        variant = f"{variant}-reuse-table" if args.reuse_table else variant
        args.out = result_path("latency_models", f"{variant}-int8" if args.int8 else variant)
    result: dict[str, Any] = {}
    console.print("[bold]1/2 device models[/]")
    devices = {}
    for name, model in ({} if args.no_device_models else calibrate()).items():
        devices[name] = model.validation
        v = model.validation
        if "spearman" in v:
            console.print(
                f"  {name:17s} holdout n={v['n']}: Spearman {v['spearman']:.3f} (FLOPs {v['flops_spearman']:.3f}), "
                f"Kendall {v['kendall']:.3f}, MAPE {v['mape_raw']:.1%} raw / {v['mape_scaled']:.1%} one scale"
            )
        else:
            for rt, r in v.items():
                console.print(
                    f"  {name:17s} {rt}: Spearman {r['spearman']:.3f} (FLOPs {r['flops_spearman']:.3f}), "
                    f"MAPE {r['mape_raw']:.1%} raw / {r['mape_scaled']:.1%} one scale"
                )
    result["device_models"] = devices
    console.print("[bold]2/2 host table[/]")
    # The 1-thread table is `host`; other thread counts ship beside it as `host-Nthread`.
    profile = "host" if args.threads == 1 else f"host-{args.threads}thread"
    path = Path(args.table) if args.table else PROFILE_DIR / f"{profile}.table.json"
    keys: list[str] = []
    for name in ("lenet5", "resnet20", "mobilenetv2", "mobilenetv2-0.5"):
        keys += reachable_keys(trace_ops(create_model(name), (1, 1, 28, 28)))
    keys = list(dict.fromkeys(keys))
    if not args.reuse_table:
        path.unlink(missing_ok=True)
        profiler.run(keys, path, threads=args.threads, device=profile, passes=args.passes)
    table = LatencyTable.load(path)
    context = table.meta["context"] if args.reuse_table else fit_context(table, rounds=args.rounds)
    # Paired A/B: the same measurements predicted without the SIMD channel block (see table.py).
    compare = {}
    if table.meta.get("channel_block", 1) > 1:
        compare["no channel block"] = LatencyTable({**table.meta, "channel_block": 1}, table.entries)
    rounded = validate_table(table, per_model=args.per_model, round_to=8, compare=compare, rounds=args.rounds)
    if not args.reuse_table:
        table.meta["validation"] = {k: v for k, v in rounded.items() if k != "rows"}
        table.save(path)
    by16 = validate_table(table, per_model=args.per_model, round_to=16, seed=2, compare=compare, rounds=args.rounds)
    odd = validate_table(
        table, per_model=max(4, args.per_model // 4), round_to=1, seed=1, compare=compare, rounds=args.rounds
    )
    result["host"] = {
        "signatures": len(keys), "overhead_ms": table.overhead_ms, "context": context,
        "table_profiled": table.meta.get("updated"), "reprofiled": not args.reuse_table,
        "validation_round_to_8": rounded, "validation_round_to_16": by16, "validation_unrounded": odd,
    }  # fmt: skip
    validations = [("channels rounded to 8", rounded), ("rounded to 16", by16), ("unrounded channels", odd)]
    if args.int8:
        int8_keys = [k for k in keys if k.split("|")[0] in ("conv", "depthwise", "linear")]
        int8_keys = [k.removesuffix("|fp32") + "|int8" for k in int8_keys]
        if args.reuse_table:  # the table's int8 entries and context as they are
            result["host"]["int8_context"] = table.meta["context"]["by_precision"]["int8"]
        else:
            console.print(f"  int8: profiling {len(int8_keys)} weighted-operator signatures (those missing)")
            profiler.run(int8_keys, path, threads=args.threads, device=profile, passes=args.passes)
            table = LatencyTable.load(path)  # with the fp32 context the int8 fit holds
            result["host"]["int8_context"] = fit_context(table, precision="int8", rounds=args.rounds)
            table.save(path)
        # Paired A/B: the same measurements priced without the fitted cost of precision changes.
        import copy

        plain = LatencyTable(copy.deepcopy(table.meta), table.entries)
        plain.meta["context"]["by_precision"]["int8"].pop("change_ms_per_mb", None)
        # and with int8 input channels blocked like float ones (how tables were read before 2026-12-04)
        blocked = LatencyTable({**table.meta, "int8_input_block": table.channel_block}, table.entries)
        pairs = {"no precision-change cost": plain, "int8 input channels blocked (before)": blocked}
        int8 = {
            mode: validate_table(table, per_model=args.per_model, round_to=8, seed=3, int8=mode, compare=pairs,
                                 rounds=args.rounds)
            for mode in ("all", "mixed")
        }  # fmt: skip
        if not args.reuse_table:
            table.meta["validation_int8"] = {
                mode: {k: v for k, v in r.items() if k != "rows"} for mode, r in int8.items()
            }
            table.save(path)
        result["host"]["validation_int8"] = int8
        validations += [(f"int8, every layer ({len(int8_keys)} int8 entries)", int8["all"]),
                        ("int8, half the layers", int8["mixed"])]  # fmt: skip
    for label, r in validations:
        console.print(
            f"  {label}: {r['n']} models, median |error| {r['median_abs_error']:.1%}, Spearman {r['spearman']:.3f}, "
            f"speed-up median |error| {r['speedup_median_abs_error']:.1%}, "
            f"median measured {r['median_measured_ms']:.3f} ms"
        )
        for k, c in r.get("compare", {}).items():
            console.print(
                f"    same models, {k}: median |error| {c['median_abs_error']:.1%}, Spearman {c['spearman']:.3f}, "
                f"speed-up median |error| {c['speedup_median_abs_error']:.1%}"
            )
    if args.record or not args.reuse_table:
        from edgecompress.latency_models.host import record_pass

        table = LatencyTable.load(path)  # as saved above: record on top of it
        source = f"benchmarks/results/{Path(args.out).name}"
        recorded = [rounded, by16, *([int8["all"], int8["mixed"]] if args.int8 else [])]
        for r in recorded:
            record_pass(table, r, source)
        table.save(path)
        console.print(f"  recorded {len(recorded)} validation passes in {path}")
    # How much this machine drifts: the same model measured repeatedly, a few seconds apart.
    import time

    from edgecompress.latency_models.onnx import measure_ms

    base = create_model("resnet20").eval()
    drift = []
    for _ in range(8):
        drift.append(measure_ms(base, (1, 1, 28, 28), threads=args.threads, repeats=300))
        time.sleep(2)
    result["machine_drift_resnet20_ms"] = drift
    console.print(
        f"  drift: resnet20 measured 8 times 2 s apart (median of 300 each): {min(drift):.3f} - {max(drift):.3f} ms"
    )
    console.print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
