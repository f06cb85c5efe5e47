"""Wanted mixes of attributes and exact quotas: what mitigations, quota arms and the group-scene planner aim at.

A mix is {attribute: {value: probability}} over a detector's (or the world's) classes, each attribute's
probabilities summing to 1. Users write it as `--mix skin=uniform`, `--mix gender=man:0.3,woman:0.7` or
`--mix gender=woman` (all of one value); attributes not named are left alone. Attributes are independent in a
mix: the joint target over several attributes is the product of their marginals (`joint_cells`).

Quotas turn a mix into exact counts:

- `largest_remainder(probs, n)`: Hamilton's method: floor(n p_k) each, then the remaining seats to the largest
  remainders (ties to the lower index). The counts sum to n and each is within 1 of n p_k.
- `quota_sequence(probs, n)`: a deterministic order for images 0, 1, 2, ... when the batch size is not known in
  advance: Tijdeman's chairman assignment (earliest deadline first; ties to the lower index). Every prefix stays
  within one image of its quota, and every prefix whose n p_k are whole numbers is exact (a uniform mix over K
  values is exact in every block of K images). The plain largest-deficit rule breaks the first promise.
- `quota_assignments(mix, n)`: the same over the joint cells of several attributes (`cell_sequence`), ties broken
  toward the cell whose values lag their marginal quotas, so each attribute is balanced early as well.

Written by hand: these are a few lines of arithmetic that no small, well-kept library offers in this form.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

from fairdiff.errors import FairdiffError

Mix = dict[str, dict[str, float]]


def _number(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FairdiffError(f"--mix {item!r}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise FairdiffError(f"--mix {item!r}: weights must be finite and >= 0, got {text}")
    return value


def parse_mix_item(item: str, classes: Mapping[str, Sequence[str]]) -> tuple[str, dict[str, float]]:
    """One `ATTRIBUTE=uniform | VALUE | VALUE:W,VALUE:W,...` item -> (attribute, {value: probability}) over all
    of the attribute's classes (values not given get 0; weights are normalized to sum 1)."""
    if not isinstance(item, str) or "=" not in item:
        raise FairdiffError(f"--mix {item!r}: expected ATTRIBUTE=uniform or ATTRIBUTE=VALUE:WEIGHT,...")
    attribute, _, spec = (part.strip() for part in item.partition("="))
    if attribute not in classes:
        raise FairdiffError(f"--mix {item!r}: unknown attribute {attribute!r}; choose one of: {', '.join(classes)}")
    values = list(classes[attribute])
    if spec == "uniform":
        return attribute, {v: 1.0 / len(values) for v in values}
    weights: dict[str, float] = {}
    for part in spec.split(","):
        value, sep, weight = (p.strip() for p in part.partition(":"))
        if value not in values:
            raise FairdiffError(
                f"--mix {item!r}: unknown {attribute} value {value!r}; choose from: {', '.join(values)}"
            )
        if value in weights:
            raise FairdiffError(f"--mix {item!r}: {value!r} is given twice")
        weights[value] = _number(weight, item) if sep else 1.0
    total = sum(weights.values())
    if total <= 0:
        raise FairdiffError(f"--mix {item!r}: the weights sum to 0")
    return attribute, {v: weights.get(v, 0.0) / total for v in values}


def parse_mix(items: Sequence[str], classes: Mapping[str, Sequence[str]]) -> Mix:
    """A mix from `--mix` items (one attribute each); an error names the first bad item."""
    mix: Mix = {}
    for item in items:
        attribute, probs = parse_mix_item(item, classes)
        if attribute in mix:
            raise FairdiffError(f"--mix: attribute {attribute!r} is given twice")
        mix[attribute] = probs
    return mix


def check_mix(mix: Mapping[str, Mapping[str, float]], classes: Mapping[str, Sequence[str]]) -> Mix:
    """A mix given as data (a run config, a layout file): known attributes and values, probabilities >= 0
    summing to 1 within 1e-6. Returns it over every class of each attribute, in class order."""
    out: Mix = {}
    for attribute, probs in mix.items():
        if attribute not in classes:
            raise FairdiffError(f"mix: unknown attribute {attribute!r}; choose one of: {', '.join(classes)}")
        unknown = sorted(set(probs) - set(classes[attribute]))
        if unknown:
            raise FairdiffError(f"mix: unknown {attribute} value(s) {unknown}; allowed: {list(classes[attribute])}")
        values = {v: float(probs.get(v, 0.0)) for v in classes[attribute]}
        if any(not math.isfinite(p) or p < 0 for p in values.values()):
            raise FairdiffError(f"mix: {attribute} probabilities must be finite and >= 0, got {dict(probs)}")
        if abs(sum(values.values()) - 1.0) > 1e-6:
            raise FairdiffError(f"mix: {attribute} probabilities sum to {sum(values.values()):g}, expected 1")
        out[attribute] = values
    return out


def format_mix(mix: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The `--mix` items that give `mix` back (for run configs and cards)."""
    return [f"{a}=" + ",".join(f"{v}:{p:g}" for v, p in probs.items()) for a, probs in mix.items()]


def joint_cells(mix: Mapping[str, Mapping[str, float]]) -> list[tuple[dict[str, str], float]]:
    """Every combination of the mix's attributes with its probability (the product of the marginals), in
    attribute then class order; combinations of probability 0 are left out."""
    attributes = list(mix)
    cells = []
    for combo in itertools.product(*(list(mix[a].items()) for a in attributes)):
        p = math.prod(prob for _, prob in combo)
        if p > 0:
            cells.append(({a: value for a, (value, _) in zip(attributes, combo, strict=True)}, p))
    return cells


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FairdiffError(f"a quota needs a whole number of images >= 0, got {n!r}")


def largest_remainder(probs: Sequence[float], n: int) -> list[int]:
    """Counts for n seats by Hamilton's largest-remainder method (ties to the lower index); sums to n."""
    _check_n(n)
    total = float(sum(probs))
    if total <= 0 or any(p < 0 for p in probs):
        raise FairdiffError(f"a quota needs probabilities >= 0 with a positive sum, got {list(probs)}")
    quotas = [n * p / total for p in probs]
    counts = [math.floor(q + 1e-9) for q in quotas]
    left = n - sum(counts)
    order = sorted(range(len(probs)), key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in order[:left]:
        counts[k] += 1
    return counts


def _normalized(weights: Sequence[float]) -> list[float]:
    weights = [float(w) for w in weights]
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        raise FairdiffError(f"a quota needs probabilities >= 0 with a positive sum, got {weights}")
    return [w / total for w in weights]


def _chairman(p: Sequence[float], n: int, tiebreak, on_pick=None) -> list[int]:
    """Tijdeman's chairman assignment (1980): earliest deadline first. Class k's j-th image is released at
    m = (j - C) / p_k and due by (j - 1 + C) / p_k, C = 1 - 1/(2(K - 1)); image m (1-based) goes to the released
    class with the earliest deadline (ties: `tiebreak(k, m)`, largest first). Every prefix then stays within C < 1
    of its quota (the plain largest-deficit rule does not: weights 10, 2, 10, 0.5, 1, 10 leave a class 1.06
    behind after 27 images), so a prefix whose m p_k are whole numbers is exact."""
    live = [k for k, pk in enumerate(p) if pk > 0]
    c = 1.0 - 1.0 / (2 * (len(live) - 1)) if len(live) > 1 else 1.0
    counts = [0] * len(p)
    out = []
    for m in range(1, n + 1):
        released = [k for k in live if m * p[k] - counts[k] >= 1 - c - 1e-9] or live
        k = min(released, key=lambda k: (round((counts[k] + c) / p[k], 9), *(-x for x in tiebreak(k, m)), k))
        counts[k] += 1
        out.append(k)
        if on_pick is not None:
            on_pick(k)
    return out


def quota_sequence(probs: Sequence[float], n: int) -> list[int]:
    """Class index of images 0..n-1 by Tijdeman's chairman assignment (`_chairman`, ties to the lower index):
    every prefix within one image of its quota, exact where its n p_k are whole numbers."""
    _check_n(n)
    return _chairman(_normalized(probs), n, lambda k, m: ())


def cell_sequence(cells: Sequence[tuple[Mapping[str, str], float]], n: int) -> list[int]:
    """Cell index of images 0..n-1 for joint cells [(values, weight)]: `quota_sequence` over the cells, ties to
    the cell whose values lag furthest behind their marginal quotas (the sum over its attributes of
    P(value) m - count), then to the lower index. So the marginals of a joint mix are balanced early too:
    gender=uniform x skin=uniform gives both genders and all four skins in the first 4 images (index ties alone
    gave 4 men), and the joint stays exact in every block where the n p are whole numbers."""
    _check_n(n)
    p = _normalized([w for _, w in cells])
    marginal: dict[tuple[str, str], float] = {}
    for (values, _), pk in zip(cells, p, strict=True):
        for item in values.items():
            marginal[item] = marginal.get(item, 0.0) + pk
    seen = dict.fromkeys(marginal, 0)

    def lag(k: int, m: int) -> tuple[float]:
        return (round(sum(marginal[item] * m - seen[item] for item in cells[k][0].items()), 9),)

    def picked(k: int) -> None:
        for item in cells[k][0].items():
            seen[item] += 1

    return _chairman(p, n, lag, picked)


def quota_assignments(mix: Mapping[str, Mapping[str, float]], n: int) -> list[dict[str, str]]:
    """The attributes of images 0..n-1 under `mix` (joint over its attributes), in `cell_sequence` order."""
    cells = joint_cells(mix)
    return [dict(cells[k][0]) for k in cell_sequence(cells, n)]
