from __future__ import annotations

import pytest

from fairdiff.metrics import normalized_bias


@pytest.mark.parametrize(
    ("shares", "expected"),
    [
        ([0.5, 0.5], 0.0),
        ([0.75, 0.25], 0.5),  # |0.75 - 0.5| / 0.5
        ([1.0, 0.0], 1.0),
        ([0.25, 0.25, 0.25, 0.25], 0.0),
        ([1.0, 0.0, 0.0, 0.0], 0.5),  # 2/12 * (1 + 1 + 1) -> 0.5 for K=4
        ([0.7, 0.15, 0.1, 0.05], 2 / 12 * (0.55 + 0.6 + 0.65 + 0.05 + 0.1 + 0.05)),
    ],
)
def test_normalized_bias_by_hand(shares, expected):
    assert normalized_bias(shares) == pytest.approx(expected)


def test_normalized_bias_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        normalized_bias([1.0])
