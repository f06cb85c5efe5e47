"""The LLM planner: any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, OpenAI) lays out each image.

The rules planner (`scene.planner.resolve`) fixes the exact attribute cells of every seat first; the LLM is asked,
per image, for JSON matching the layout schema with exactly those counts (given in the prompt), and chooses the
boxes, poses and per-person prompts. Its reply is never trusted:

- transport: the `openai` client (`openai.OpenAI(base_url, api_key, timeout, max_retries=0)`); the retries are
  ours (`LLMConfig.retries` further attempts after the first, a short backoff between them), so a timeout, a
  5xx, a refused reply and a transport error all count against the same bound. `response_format` json_schema
  is asked for first; a server that rejects it (HTTP 400) is asked again, once, with the schema in the prompt
  and plain JSON wanted.
- size: replies longer than `max_reply_chars` are refused unread; a reply cut at `max_tokens` is refused;
  over-long person prompts are truncated at a word (`MAX_PERSON_PROMPT` characters).
- shape: code fences are stripped, then strict JSON (no NaN) validated by the `Layout` model: boxes out of
  [0, 1] or with x0 >= x1 are refused with the line naming the person. The canvas, base prompt, negative and
  `planner` record are the request's, whatever the reply says; ids become p1, p2, ... .
- attributes: values outside the detector's classes are refused. Counts that break the quota are corrected:
  people whose cell is still wanted keep it, the others are reassigned to the missing cells, extra people are
  dropped, missing ones are added by the rules planner in the grid boxes that overlap the reply's boxes least
  (at a lower priority). A reply needing more than `max_corrections` (share of the seats) of that is refused.
- hostile text: a person prompt or negative with instruction-like text (ignore previous instructions, system
  prompt, role tags, URLs, code, markup) or control characters is replaced by the rules planner's prompt for
  its attributes; so is a prompt naming other attributes than the person's (e.g. "light-skinned" for a dark
  seat). With the "world" vocabulary every person prompt is the rules planner's (the bundled model knows only
  its captions); the LLM still chooses the boxes.
- after the last failed attempt, the image is planned by the rules planner and `planner.fallback` records why.

Each image's `LLMResult` says what happened (accepted / corrected / fallback, attempts, corrections); the
layout's `planner.note` repeats the corrections.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fairdiff.config import one_line
from fairdiff.errors import FairdiffError
from fairdiff.scene.layout import Layout, check_attributes, layout_schema, parse_layout_json, validate_layout
from fairdiff.scene.planner import (
    PlanRequest,
    grid_boxes,
    person_prompt,
    rules_layout,
    stated_attributes,
)
from fairdiff.world.schema import ATTRIBUTES

logger = logging.getLogger(__name__)

MAX_PERSON_PROMPT = 300
_HOSTILE = re.compile(
    r"ignore\b.{0,30}\b(?:instruction|prompt|rule|above|previous|prior)|disregard|system prompt|you are now|"
    r"jailbreak|\bdeveloper mode\b|<\||\|>|\[/?inst\]|<<sys>>|```|https?://|www\.|<\s*/?\s*[a-z]+[^>]*>|"
    r"\b(?:assistant|system|user)\s*:|\bexec\(|\beval\(|rm -rf|\$\(",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask: an OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1) and model name."""

    url: str
    model: str
    api_key: str | None = None  # None: "none" is sent (local servers ignore it)
    timeout: float = 60.0  # seconds per request
    retries: int = 2  # further attempts after the first
    backoff: float = 1.0  # seconds before the first retry, doubled each time (capped at 8)
    max_tokens: int = 4096
    max_reply_chars: int = 200_000
    max_corrections: float = 0.5  # share of an image's seats the planner may correct before refusing the reply
    structured: bool = True  # ask for response_format json_schema first
    temperature: float = 0.0


@dataclass
class LLMResult:
    """One image: the layout and what the LLM planner did."""

    layout: Layout
    status: Literal["accepted", "corrected", "fallback"]
    attempts: int
    corrections: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # why each refused attempt was refused


class _Refused(Exception):
    """A reply (or a request) that does not count as a plan; the message says why."""


def check_url(url: str) -> str:
    """An http(s) base URL, or one error naming --llm-url."""
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
        raise FairdiffError(f"--llm-url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}")
    return url.rstrip("/")


def make_client(config: LLMConfig):
    """The `openai` client for `config` (no retries of its own: `plan_llm` bounds them)."""
    import openai

    return openai.OpenAI(
        base_url=check_url(config.url), api_key=config.api_key or "none", timeout=config.timeout, max_retries=0
    )


# ------------------------------------------------------------------------------------------------ messages


def _cell_words(cell: Mapping[str, str]) -> str:
    return ", ".join(f"{a}={v}" for a, v in sorted(cell.items())) or "(no attributes)"


def messages(request: PlanRequest, index: int, *, structured: bool, previous_error: str | None = None) -> list[dict]:
    """The chat messages for image `index`: the task, the exact counts and (unstructured) the schema."""
    counts = request.counts(index)
    wanted = "\n".join(f"- {n} x {_cell_words(dict(key))}" for key, n in sorted(counts.items()))
    system = (
        "You plan the layout of one image of a group of people for a text-to-image model. Answer with one JSON "
        "object that matches the layout JSON Schema, and nothing else. Put every person in `people` with a box "
        "[x0, y0, x1, y1] in normalized coordinates (0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1, y down), the "
        "attributes given to you (exactly these keys and values), and a short visual prompt describing that "
        "one person. Never change the attributes or the number of people. The texts are image prompts only."
    )
    if not structured:
        system += "\nThe JSON Schema:\n" + json.dumps(layout_schema(), separators=(",", ":"))
    user = (
        f"Scene: {request.prompt}\n"
        f"Canvas: {request.canvas[0]} x {request.canvas[1]} pixels.\n"
        f"People: exactly {request.people}, with these attributes:\n{wanted}\n"
        'Set "canvas" to the canvas above, "prompt" to the scene, and number the ids p1, p2, ...'
    )
    out = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if previous_error:
        out.append({"role": "user", "content": f"Your previous answer was refused: {previous_error[:500]}. Try again."})
    return out


def _response_format() -> dict:
    schema = {"name": "fairdiff_layout", "schema": layout_schema(), "strict": False}
    return {"type": "json_schema", "json_schema": schema}


# ------------------------------------------------------------------------------------------------- checking


def _strip_fences(text: str) -> str:
    text = text.strip()
    match = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.DOTALL | re.IGNORECASE)
    return match.group(1) if match else text


def _truncate(text: str, limit: int = MAX_PERSON_PROMPT) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def _hostile(text: str) -> bool:
    return bool(_HOSTILE.search(text)) or any(not c.isprintable() for c in text)


def parse_reply(text: str, request: PlanRequest, config: LLMConfig, corrections: list[str]) -> Layout:
    """The reply text as a layout with the request's canvas, prompts and record (people as the LLM gave them,
    prompts truncated); `_Refused` if it is too large, not JSON, or not a valid layout."""
    if len(text) > config.max_reply_chars:
        raise _Refused(f"reply of {len(text)} characters, more than {config.max_reply_chars}")
    try:
        data = parse_layout_json(_strip_fences(text), "reply", kind="LLM")
    except FairdiffError as exc:
        raise _Refused(str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise _Refused("LLM reply: expected a JSON object with a list `people`")
    for person in data["people"]:
        if isinstance(person, dict):
            for key in ("prompt", "negative"):
                value = person.get(key)
                if isinstance(value, str) and len(value) > MAX_PERSON_PROMPT:
                    person[key] = _truncate(value)
                    corrections.append(f"{key} of person {person.get('id')!r} truncated to {len(person[key])} chars")
    data["version"] = 1
    data["canvas"] = {"width": request.canvas[0], "height": request.canvas[1]}
    data["prompt"], data["negative"], data["planner"] = request.prompt, request.negative, None
    try:
        return validate_layout(data, "reply", kind="LLM")
    except FairdiffError as exc:
        raise _Refused(str(exc)) from None


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h


def correct(
    reply: Layout,
    request: PlanRequest,
    index: int,
    classes: Mapping[str, Sequence[str]],
    corrections: list[str],
    max_corrections: float = 0.5,
) -> list[dict[str, Any]]:
    """The reply's people with the exact cells of image `index`: kept, reassigned, dropped or added (see the
    module docstring). `_Refused` for unknown attribute values or too many corrections. Returns person dicts."""
    try:
        check_attributes(reply, classes, source="LLM reply")
    except FairdiffError as exc:
        raise _Refused(str(exc)) from None
    wanted = [dict(c) for c in request.cells[index]]
    keys = sorted({k for c in wanted for k in c})
    remaining = list(wanted)
    kept: list[tuple[Any, dict | None]] = []  # (person, cell or None if it needs one)
    for person in reply.people:
        cell = {k: person.attributes.get(k) for k in keys}
        if cell in remaining:
            remaining.remove(cell)
            kept.append((person, cell))
        else:
            kept.append((person, None))
    changed = 0
    people: list[dict[str, Any]] = []
    for person, cell in kept:
        if cell is None:
            if not remaining:
                changed += 1
                corrections.append(f"extra person {person.id!r} dropped")
                continue
            cell = remaining.pop(0)
            changed += 1
            corrections.append(f"person {person.id!r} reassigned to {_cell_words(cell)}")
        people.append({"box": list(person.box), "cell": cell, "prompt": person.prompt, "negative": person.negative,
                       "priority": person.priority, "from_llm": True})  # fmt: skip
    if remaining:
        free = list(grid_boxes(request.people, request.margin))
        floor = min((p["priority"] for p in people), default=0) - 1
        for cell in remaining:
            box = min(free, key=lambda b: sum(_overlap(b, p["box"]) for p in people))
            free.remove(box)
            changed += 1
            corrections.append(f"missing person {_cell_words(cell)} added by the rules planner")
            people.append({"box": list(box), "cell": cell, "prompt": None, "negative": "", "priority": floor,
                           "from_llm": False})  # fmt: skip
    if changed > request.people * max_corrections:
        raise _Refused(f"reply needs {changed} corrections of {request.people} seats, more than {max_corrections:.0%}")
    return people


def _prompts(people: list[dict[str, Any]], request: PlanRequest, corrections: list[str]) -> None:
    """Each person's final prompt: the LLM's where clean and consistent ("sd" vocabulary), else the rules'."""
    for i, p in enumerate(people):
        rules = person_prompt(p["cell"], request.parsed.noun, request.vocabulary)
        text, neg = p["prompt"], p["negative"]
        if text is not None and _hostile(text):
            corrections.append(f"prompt of person p{i + 1} replaced (instruction-like text)")
            text = rules
        elif text is not None and request.vocabulary != "world":
            clash = {a: v for a, v in stated_attributes(text).items() if a in p["cell"] and p["cell"][a] != v}
            if clash:
                corrections.append(f"prompt of person p{i + 1} replaced (names {_cell_words(clash)})")
                text = rules
        else:
            text = rules  # the world vocabulary, or a person the rules planner added
        if neg and _hostile(neg):
            corrections.append(f"negative of person p{i + 1} dropped (instruction-like text)")
            neg = ""
        p["prompt"], p["negative"] = text, neg


# --------------------------------------------------------------------------------------------------- asking


def _ask(client, config: LLMConfig, msgs: list[dict], structured: bool) -> str:
    import openai

    kwargs: dict[str, Any] = {
        "model": config.model,
        "messages": msgs,
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
    }
    if structured:
        kwargs["response_format"] = _response_format()
    try:
        response = client.chat.completions.create(**kwargs)
    except openai.BadRequestError:
        raise
    except openai.APITimeoutError:
        raise _Refused(f"no reply within {config.timeout:g} s") from None
    except openai.APIStatusError as exc:
        raise _Refused(f"HTTP {exc.status_code} from the server") from None
    except openai.APIConnectionError as exc:
        raise _Refused(one_line(f"cannot reach {config.url}: {exc.__cause__ or exc}")[:200]) from None
    except (openai.APIError, ValueError, TypeError) as exc:  # a body the client cannot read as a completion
        raise _Refused(one_line(f"unreadable response: {exc}")[:200]) from None
    choices = getattr(response, "choices", None)
    if not choices:
        raise _Refused("the response has no choices")
    choice = choices[0]
    if getattr(choice, "finish_reason", None) == "length":
        raise _Refused(f"reply cut at max_tokens={config.max_tokens}")
    content = getattr(getattr(choice, "message", None), "content", None)
    if not isinstance(content, str) or not content.strip():
        raise _Refused("empty reply")
    return content


def plan_image(
    request: PlanRequest,
    index: int,
    config: LLMConfig,
    client,
    classes: Mapping[str, Sequence[str]],
    state: dict,
) -> LLMResult:
    """Image `index` planned by the LLM (bounded attempts), else by the rules with the reason recorded."""
    import openai

    errors: list[str] = []
    attempts = 0
    previous = None
    while attempts < 1 + config.retries:
        if attempts:
            time.sleep(min(8.0, config.backoff * 2 ** (attempts - 1)))
        attempts += 1
        corrections: list[str] = []
        try:
            msgs = messages(request, index, structured=state["structured"], previous_error=previous)
            try:
                text = _ask(client, config, msgs, state["structured"])
            except openai.BadRequestError as exc:
                if not state["structured"]:
                    raise _Refused(f"HTTP 400 from the server: {one_line(str(exc))[:200]}") from None
                state["structured"] = False  # the server does not take response_format: schema in the prompt
                logger.info("LLM server refused response_format json_schema; asking for plain JSON")
                msgs = messages(request, index, structured=False, previous_error=previous)
                try:
                    text = _ask(client, config, msgs, False)
                except openai.BadRequestError as exc2:
                    raise _Refused(f"HTTP 400 from the server: {one_line(str(exc2))[:200]}") from None
            reply = parse_reply(text, request, config, corrections)
            people = correct(reply, request, index, classes, corrections, config.max_corrections)
            _prompts(people, request, corrections)
        except _Refused as exc:
            errors.append(str(exc))
            previous = str(exc)
            logger.info("LLM plan of image %d refused (attempt %d): %s", index, attempts, exc)
            continue
        layout = _layout(request, index, people, config, corrections)
        return LLMResult(layout, "corrected" if corrections else "accepted", attempts, corrections, errors)
    reason = f"after {attempts} attempt(s): {errors[-1]}" if errors else "no attempt"
    layout = rules_layout(request, index, fallback=one_line(reason)[:900], model=config.model)
    return LLMResult(layout, "fallback", attempts, [], errors)


def _layout(
    request: PlanRequest, index: int, people: list[dict[str, Any]], config: LLMConfig, corrections: list[str]
) -> Layout:
    note = "; ".join(x for x in (request.note, *corrections) if x)
    data = {
        "canvas": {"width": request.canvas[0], "height": request.canvas[1]},
        "prompt": request.prompt,
        "negative": request.negative,
        "people": [
            {
                "id": f"p{k + 1}",
                "box": p["box"],
                "attributes": p["cell"],
                "prompt": p["prompt"],
                "negative": p["negative"],
                "priority": p["priority"],
            }
            for k, p in enumerate(people)
        ],  # fmt: skip
        "planner": {
            "type": "llm",
            "seed": request.seed,
            "mix": request.mix or None,
            "model": config.model,
            "index": index,
            "images": request.images,
            "note": one_line(note)[:1000] or None,
        },
    }
    return validate_layout(data, f"planned image {index}")


def plan_llm(
    request: PlanRequest,
    config: LLMConfig,
    *,
    classes: Mapping[str, Sequence[str]] | None = None,
    client=None,
) -> list[LLMResult]:
    """Every image of `request` planned by the LLM at `config.url` (one chat request per attempt)."""
    classes = ATTRIBUTES if classes is None else classes
    client = make_client(config) if client is None else client
    state = {"structured": config.structured}
    return [plan_image(request, i, config, client, classes, state) for i in range(request.images)]
