from __future__ import annotations

import pytest

from fairdiff.world.schema import ATTRIBUTES, OCCUPATION_WORDS, SKIN_WORDS, Portrait


def test_schema_covers_the_issue():
    assert len(ATTRIBUTES["skin"]) == 4 and len(ATTRIBUTES["gender"]) == 2
    assert len(ATTRIBUTES["occupation"]) >= 8
    assert set(SKIN_WORDS) == set(ATTRIBUTES["skin"]) and set(OCCUPATION_WORDS) == set(ATTRIBUTES["occupation"])


def test_portrait_index_and_dict():
    p = Portrait(gender="woman", skin="brown", age="old", attire="revealing", occupation="pilot")
    assert p.index("skin") == 2 and p.index("attire") == 1
    assert Portrait(**p.as_dict()) == p
    with pytest.raises(ValueError, match="`occupation` must be one of"):
        Portrait(**{**p.as_dict(), "occupation": "astronaut"})
