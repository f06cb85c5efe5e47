"""Prompt syntax: `"a woman -revealing"` moves each `-term` into the negative prompt.

A term is a word (`-revealing`, `-don't`), a hyphenated word (`-low-quality`) or a quoted phrase (`-"bare
shoulders"` or `-'bare shoulders'`). Only a `-` that starts a word counts, so "dark-skinned" stays in the
prompt; punctuation after a word stays in the prompt ("a woman -revealing, smiling" -> "a woman, smiling").
"""

from __future__ import annotations

import re

from fairdiff.errors import FairdiffError

_WORD = r"""[^\s"',;:.!?]+(?:'[^\s"',;:.!?]+)*"""  # an apostrophe inside a word belongs to it
_NEGATED = re.compile(rf"""(?:\s+|^)-(?:"([^"]*)"|'([^']*)'|({_WORD}))""")


def split_negative_terms(prompt: str, negative: str | None = None) -> tuple[str, str]:
    """(positive prompt, negative prompt): `-terms` removed from `prompt`, appended to `negative` with ", "."""
    terms: list[str] = []

    def take(match: re.Match) -> str:
        term = next(g for g in match.groups() if g is not None).strip()
        if not term:
            raise FairdiffError(f"empty negative term in prompt {prompt!r}")
        terms.append(term)
        return ""

    positive = _NEGATED.sub(take, prompt)
    if positive.count('"') % 2 or re.search(r"(?:^|\s)-[\"']", positive):
        raise FairdiffError(f"unbalanced quote in prompt {prompt!r}")
    positive = re.sub(r"\s+", " ", positive).strip()
    parts = [p for p in [negative.strip() if negative else "", *terms] if p]
    return positive, ", ".join(parts)
