from __future__ import annotations

import pytest

from fairdiff.errors import FairdiffError
from fairdiff.models.prompts import split_negative_terms


@pytest.mark.parametrize(
    ("prompt", "negative", "expected"),
    [
        ("a woman -revealing", None, ("a woman", "revealing")),
        ("a woman -revealing", "blurry", ("a woman", "blurry, revealing")),
        ('a doctor -"bare shoulders" -low-quality', None, ("a doctor", "bare shoulders, low-quality")),
        ("a doctor -'bare shoulders'", None, ("a doctor", "bare shoulders")),
        ("a dark-skinned woman", None, ("a dark-skinned woman", "")),
        ("-ugly a dog", None, ("a dog", "ugly")),
        ("a - b", None, ("a - b", "")),
        ("a photo", "", ("a photo", "")),
        ("a photo of a woman -revealing, high quality", None, ("a photo of a woman, high quality", "revealing")),
        ("a face -don't -blurry.", "x", ("a face.", "x, don't, blurry")),
    ],
)
def test_split_negative_terms(prompt, negative, expected):
    assert split_negative_terms(prompt, negative) == expected


@pytest.mark.parametrize("prompt", ['a doctor -"bare shoulders', 'a doctor -""'])
def test_bad_prompt_syntax(prompt):
    with pytest.raises(FairdiffError, match="prompt"):
        split_negative_terms(prompt)
