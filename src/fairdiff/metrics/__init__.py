"""Bias metrics with bootstrap CIs (docs/metrics.md): formulas, MetricFrame and OutcomeFrame, CSV input.

from fairdiff.metrics import MetricFrame
frame = MetricFrame(data=rows, classes={"gender": ["man", "woman"]})
frame.overall  # mean over prompts of each metric, with a CI over prompts
"""

from __future__ import annotations

from fairdiff.metrics.bootstrap import BootstrapConfig, percentile_ci, prompt_mean_ci
from fairdiff.metrics.formulas import (
    SHARE_METRICS,
    check_shares,
    check_target,
    deviation_ratio,
    discrepancy,
    kl_to_target,
    mad,
    normalized_bias,
    parity_difference,
    parity_ratio,
)
from fairdiff.metrics.frame import MetricFrame
from fairdiff.metrics.labels import PRODUCT, infer_classes
from fairdiff.metrics.outcome import OutcomeFrame

__all__ = [
    "PRODUCT",
    "SHARE_METRICS",
    "BootstrapConfig",
    "MetricFrame",
    "OutcomeFrame",
    "check_shares",
    "check_target",
    "deviation_ratio",
    "discrepancy",
    "infer_classes",
    "kl_to_target",
    "mad",
    "normalized_bias",
    "parity_difference",
    "parity_ratio",
    "percentile_ci",
    "prompt_mean_ci",
]
