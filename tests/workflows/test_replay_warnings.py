"""A replay whose fine-tuning hurt says so in its report, with what to try."""

from __future__ import annotations

from edgecompress.workflows.replay import finetune_warnings, report_markdown


def test_fine_tuning_that_diverged_or_hurt_is_reported() -> None:
    # A MobileNetV2-0.5 8/8 replay at lr 0.05 ended at chance (0.1309 -> 0.1000 on the test split).
    assert finetune_warnings(0.1309, 0.1, 10, 0.05) == [
        "fine-tuning left the model at chance (test top-1 0.1309 -> 0.1000; chance 0.1000): training diverged at "
        "peak lr 0.05; replay again with a lower --lr (e.g. 0.01)"
    ]
    assert finetune_warnings(0.90, 0.85, 10, 0.01) == [
        "fine-tuning made the model worse (test top-1 0.9000 -> 0.8500) at peak lr 0.01; try a lower --lr "
        "(e.g. 0.002) or more epochs"
    ]
    assert finetune_warnings(0.50, 0.91, 10, 0.01) == [] and finetune_warnings(0.91, 0.905, 10, 0.01) == []


def test_the_report_leads_with_the_warning(replayed) -> None:  # type: ignore[no-untyped-def]
    report = dict(replayed["report"])
    assert "warnings" in report  # every report carries the list (empty when fine-tuning helped)
    report["warnings"] = ["fine-tuning left the model at chance"]
    assert report_markdown(report).splitlines()[2] == "**Warning:** fine-tuning left the model at chance"
