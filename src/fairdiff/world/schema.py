"""The portrait world's attribute schema: which attributes exist and which values each can take.

The values are fixed (the renderer and the classifier know them); a world config chooses the occupations and
the probabilities. Words are the ones captions use, so `"a dark-skinned old woman doctor"` names
skin=dark, age=old, gender=woman, occupation=doctor.
"""

from __future__ import annotations

from dataclasses import dataclass

#: perceived gender presentation, drawn as hair silhouette (short crop vs long hair to the shoulders)
GENDERS: tuple[str, ...] = ("man", "woman")
#: four bins of the Monk Skin Tone scale: MST 1-3, 4-5, 6-7, 8-10
SKINS: tuple[str, ...] = ("light", "medium", "brown", "dark")
#: perceived age, drawn as hair colour (dark/blond vs grey/white) and face lines
AGES: tuple[str, ...] = ("young", "old")
#: attire, the stand-in for sexualized depiction: covered shoulders vs bare shoulders with a strapped top
ATTIRES: tuple[str, ...] = ("covered", "revealing")

#: occupations the renderer can draw: clothing colour, background colour and a small prop each
OCCUPATIONS: tuple[str, ...] = (
    "doctor",
    "nurse",
    "ceo",
    "engineer",
    "teacher",
    "housekeeper",
    "firefighter",
    "scientist",
    "cashier",
    "pilot",
)

#: attribute name -> values; the order is the class index everywhere (classifier heads, manifests, metrics)
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gender": GENDERS,
    "skin": SKINS,
    "age": AGES,
    "attire": ATTIRES,
    "occupation": OCCUPATIONS,
}

#: attributes a world config sets probabilities for (occupation is chosen per caption, attire per context)
DEMOGRAPHIC_ATTRIBUTES: tuple[str, ...] = ("gender", "skin", "age")

#: the words captions use for each value
SKIN_WORDS: dict[str, str] = {
    "light": "light-skinned",
    "medium": "medium-skinned",
    "brown": "brown-skinned",
    "dark": "dark-skinned",
}
ATTIRE_WORDS: dict[str, str] = {"covered": "in modest clothes", "revealing": "in revealing clothes"}
OCCUPATION_WORDS: dict[str, str] = {o: ("CEO" if o == "ceo" else o) for o in OCCUPATIONS}


@dataclass(frozen=True)
class Portrait:
    """One portrait's ground truth: a value for every attribute in `ATTRIBUTES`."""

    gender: str
    skin: str
    age: str
    attire: str
    occupation: str

    def __post_init__(self) -> None:
        for name, values in ATTRIBUTES.items():
            value = getattr(self, name)
            if value not in values:
                raise ValueError(f"`{name}` must be one of {list(values)}, got {value!r}.")

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTES}

    def index(self, name: str) -> int:
        """Class index of this portrait's value for attribute `name`."""
        return ATTRIBUTES[name].index(getattr(self, name))
