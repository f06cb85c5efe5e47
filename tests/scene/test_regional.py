from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from fairdiff.errors import FairdiffError
from fairdiff.models.loading import LoadedModel, load_pipeline
from fairdiff.models.random_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline
from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw
from fairdiff.models.tiny import build_tiny_pipeline, build_tiny_unet
from fairdiff.scene.layout import Layout
from fairdiff.scene.regional import (
    BoxTokens,
    CellFold,
    RegionalAttnProcessor,
    cell_grid,
    cell_layouts,
    draw_layouts,
    layout_images,
    owner_map,
    regional_fields,
    training_size,
)


def _layout(boxes, prompts=None, priorities=None, base="", width=32, height=32, negatives=None) -> Layout:
    people = []
    for i, box in enumerate(boxes):
        people.append(
            {
                "id": f"p{i}",
                "box": list(box),
                "prompt": (prompts or [f"box {i}"] * len(boxes))[i],
                "negative": (negatives or [""] * len(boxes))[i],
                "priority": (priorities or [0] * len(boxes))[i],
            }
        )
    return Layout.model_validate({"canvas": {"width": width, "height": height}, "prompt": base, "people": people})


def _loaded(pipe, kind: str) -> LoadedModel:
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipeline=pipe, name=f"random-{kind}", kind=kind, source=".")


@pytest.fixture(scope="module")
def tiny(minilm):
    return _loaded(build_tiny_pipeline(build_tiny_unet(seed=1), text=minilm), "tiny")


def test_owner_map_priority_and_ties():
    lay = _layout([(0, 0, 0.75, 1), (0.25, 0, 1, 1), (0.5, 0, 1, 0.5)], priorities=[5, 1, 1])
    owner = owner_map(lay, 2, 4)  # cell centres at x = 1/8, 3/8, 5/8, 7/8; y = 1/4, 3/4
    assert owner.tolist() == [[0, 0, 0, 2], [0, 0, 0, 1]]  # box 0 wins its overlap; box 2 ties box 1 and is later
    assert owner_map(_layout([(0, 0, 0.5, 0.5)]), 2, 2).tolist() == [[0, -1], [-1, -1]]


def test_mask_against_a_direct_softmax_on_a_toy_layer():
    """Each pixel attends to the base tokens (if the base is given) plus its own box's tokens, on a toy layer."""
    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    layouts = [
        _layout([(0, 0, 0.75, 1), (0.25, 0, 1, 1)], priorities=[0, 3], base="a base"),
        _layout([(0, 0, 0.5, 1)], base=""),  # one box fewer (padded), empty base: boxed pixels skip the base
    ]
    n, boxes, length, dim = 2, 2, 3, 6
    cond, uncond = torch.randn(n, boxes, length, dim), torch.randn(n, boxes, length, dim)
    proc = RegionalAttnProcessor(layouts, BoxTokens(cond, uncond), size=(2, 4))
    hidden = torch.randn(2 * n, 8, 8)  # (rows, 2x4 pixels, channels): [uncond; cond]
    base = torch.randn(2 * n, 5, dim)
    got = proc(attn, hidden, encoder_hidden_states=base)

    want = torch.empty_like(got)
    for row in range(2 * n):
        img, is_cond = row % n, row >= n
        lay = layouts[img]
        tokens = (cond if is_cond else uncond)[img]
        base_given = bool((lay.prompt if is_cond else lay.negative).strip())
        for q in range(8):
            y, x = divmod(q, 4)
            cx, cy = (x + 0.5) / 4, (y + 0.5) / 2
            owner, best = None, None
            for r, p in enumerate(lay.people):  # direct: the highest priority box containing the centre
                x0, y0, x1, y1 = p.box
                if x0 <= cx < x1 and y0 <= cy < y1 and (best is None or p.priority >= best):
                    owner, best = r, p.priority
            keys = []
            if owner is None or base_given:
                keys.append(base[row])
            if owner is not None:
                keys.append(tokens[owner])
            context = torch.cat(keys)
            qv = attn.to_q(hidden[row, q : q + 1]).view(1, 2, 4).transpose(0, 1)  # (heads, 1, 4)
            k = attn.to_k(context).view(-1, 2, 4).transpose(0, 1)
            v = attn.to_v(context).view(-1, 2, 4).transpose(0, 1)
            weights = torch.softmax(qv @ k.transpose(1, 2) / 2.0, dim=-1)  # scale 1/sqrt(4)
            out = (weights @ v).transpose(0, 1).reshape(1, 8)
            want[row, q] = attn.to_out[0](out)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_batch_of_the_wrong_size_is_refused():
    proc = RegionalAttnProcessor([_layout([(0, 0, 1, 1)])], BoxTokens(*torch.zeros(2, 1, 1, 2, 6)), size=(2, 2))
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    with pytest.raises(FairdiffError, match="built for 1 images"):
        proc(attn, torch.randn(3, 4, 8), encoder_hidden_states=torch.randn(3, 5, 6))


@pytest.mark.parametrize("mode", ["regional", "multidiffusion"])
def test_one_box_over_the_canvas_with_an_empty_base_is_plain_sampling(tiny, mode):
    prompt = "a photo of the face of a dark-skinned woman"
    lay = _layout([(0, 0, 1, 1)], prompts=[prompt], base="")
    got = draw_layouts(tiny, [lay, lay], [3, 4], mode=mode, steps=2, autocast="off")
    plain = draw(tiny, SamplingRequest([ImageOptions(prompt, "", s) for s in (3, 4)], steps=2, autocast="off"))
    assert np.abs(got.astype(int) - plain.astype(int)).max() <= 1


def test_regional_draws_the_boxes_prompts_on_a_wide_bundled_canvas(tiny):
    lay = _layout(
        [(0, 0, 0.5, 1), (0.5, 0, 1, 1)],
        prompts=["a photo of the face of a light-skinned man", "a photo of the face of a dark-skinned woman"],
        base="a photo of two people",
        width=64,
    )
    plain = draw_layouts(tiny, [lay], [0], mode="plain", steps=2, autocast="off")
    regional = draw_layouts(tiny, [lay], [0], mode="regional", steps=2, autocast="off")
    multi = draw_layouts(tiny, [lay], [0], mode="multidiffusion", steps=2, autocast="off")
    assert plain.shape == regional.shape == multi.shape == (1, 32, 64, 3)
    assert not np.array_equal(plain, regional) and not np.array_equal(plain, multi)


def test_processor_and_hook_run_on_random_sd_and_sdxl():
    for kind, pipe in (("sd", tiny_sd_pipeline(seed=0)), ("sdxl", tiny_sdxl_pipeline(seed=0))):
        loaded = _loaded(pipe, kind)
        lay = _layout([(0, 0, 0.5, 1), (0.25, 0, 1, 1)], prompts=["red", "blue"], base="a room", width=64, height=64)
        lay2 = _layout([(0, 0, 1, 0.5)], prompts=["green"], negatives=["grey"], base="", width=64, height=64)
        plain = draw_layouts(loaded, [lay, lay2], [0, 1], mode="plain", steps=2, guidance=5.0)
        for mode in ("regional", "multidiffusion"):
            got = draw_layouts(loaded, [lay, lay2], [0, 1], mode=mode, steps=2, guidance=5.0)
            assert got.shape == plain.shape == (2, 64, 64, 3), kind
            assert not np.array_equal(got, plain), (kind, mode)


def test_a_person_hidden_by_higher_priority_boxes_is_refused(tiny):
    lay = _layout([(0, 0, 1, 1), (0.2, 0.2, 0.4, 0.4)], priorities=[1, 0])
    with pytest.raises(FairdiffError, match=r'people\[1\] \(id "p1"\)'):
        draw_layouts(tiny, [lay], [0], steps=1)


#: sha256 of draw() on the bundled model before tiny.py learned other canvas sizes (fp32 on this machine's CPU
#: kernels, keyed by torch's thread count; bf16 autocast "on" did not depend on it).
BEFORE = {
    ("off", 1): "7c1c96fd6bc26a975b2530074f5b597fa512e4296808178ce330f8e3b7fec71a",
    ("off", 2): "c4a37ccd6e53b626afcddae662bfb5ea97bf59b4c4b199213b4697b979cb569b",
    ("on", None): "ac250b9e4f2e6c8348a16d3300f822c9027bc1a703b7cd639f84eeba55e6a915",
}


def test_default_bundled_images_are_byte_identical_to_before():
    loaded = load_pipeline("tiny")
    loaded.pipeline.set_progress_bar_config(disable=True)
    images = [
        ImageOptions("a photo of the face of a doctor", "", 0, None),
        ImageOptions("a photo of the face of a nurse", "revealing clothes", 7, 3.0),
    ]
    for autocast, key in (("off", ("off", torch.get_num_threads())), ("on", ("on", None))):
        if key not in BEFORE:
            continue
        for size in ({}, {"height": 32, "width": 32}):
            out = draw(loaded, SamplingRequest(images, steps=4, autocast=autocast, **size))
            assert hashlib.sha256(out.tobytes()).hexdigest() == BEFORE[key], (autocast, size)


# ------------------------------------------------------------------------------------------- the cell fold


def _row(prompts, base="a photo of people", cell=32, margin=0.0625, negatives=None) -> Layout:
    k = len(prompts)
    boxes = [((i + margin) / k, margin, (i + 1 - margin) / k, 1 - margin) for i in range(k)]
    return _layout(boxes, prompts=prompts, base=base, width=cell * k, height=cell, negatives=negatives)


def test_cell_grid_needs_every_box_inside_one_training_size_square():
    assert cell_grid([_row(["a", "b", "c", "d", "e"])], (8, 40), 8) == (1, 5)  # 32 x 160 pixels -> 8 x 40 at 1/4
    assert cell_grid([_row(["a", "b"])], (32, 64), 32) == (1, 2)
    spanning = _layout([(0, 0, 0.5, 1), (0.4, 0, 1, 1)], width=64)  # box 1 crosses x = 0.5
    assert cell_grid([_row(["a", "b"]), spanning], (32, 64), 32) is None
    assert cell_grid([_row(["a", "b"])], (32, 64), 24) is None  # 64 is no multiple of 24
    assert cell_grid([_layout([(0, 0, 1, 1)])], (32, 32), 32) is None  # one square: nothing to fold
    assert cell_grid([_row(["a", "b"])], (32, 64), None) is None
    grid = _layout([(0.5, 0.5, 1, 1), (0, 0, 0.5, 0.5)], width=64, height=64)
    assert cell_grid([grid], (64, 64), 32) == (2, 2)


def test_cell_layouts_put_each_box_in_its_square_coordinates():
    lay = _layout([(0.5, 0.5, 0.75, 1), (0.125, 0, 0.5, 0.25)], prompts=["x", "y"], width=64, height=64)
    tiles = cell_layouts([lay], 2, 2)  # squares row-major: (0,0) (0,1) (1,0) (1,1)
    assert [len(t.people) for t in tiles] == [1, 0, 0, 1]
    assert tiles[0].people[0].prompt == "y" and tiles[0].people[0].box == (0.25, 0.0, 1.0, 0.5)
    assert tiles[3].people[0].prompt == "x" and tiles[3].people[0].box == (0.0, 0.0, 0.5, 1.0)
    assert (tiles[0].canvas.width, tiles[0].canvas.height) == (32, 32)


def test_fold_and_unfold_follow_the_cell_layouts_order():
    fold = CellFold(2, 3)
    x = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 2, 4, 6)  # (B, C, H, W), squares 2 x 2
    folded = fold.fold(x)
    assert folded.shape == (12, 2, 2, 2)
    for b in range(2):
        for r in range(2):
            for c in range(3):
                assert torch.equal(folded[b * 6 + r * 3 + c], x[b, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2])
    assert torch.equal(fold.unfold(folded, 2), x)


def _square(image: np.ndarray, row: int, col: int, cell: int) -> np.ndarray:
    return image[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]


@pytest.mark.parametrize(
    ("options", "independent"), [({}, True), ({"cells": "off"}, False), ({"fold_until": 0.5}, False)]
)
def test_folded_squares_are_drawn_as_images_of_their_own(tiny, options, independent):
    """Folded, a square's pixels do not depend on another square's prompt; the whole canvas (or its late steps)
    mixes them. The UNet's forward is its own again afterwards."""
    one = _row(["a photo of the face of a light-skinned man", "a photo of the face of a dark-skinned woman"])
    two = _row(["a photo of the face of a light-skinned man", "a photo of the face of an old man"])
    got = [draw_layouts(tiny, [lay], [5], steps=3, autocast="off", **options)[0] for lay in (one, two)]
    assert np.array_equal(_square(got[0], 0, 0, 32), _square(got[1], 0, 0, 32)) == independent
    assert not np.array_equal(_square(got[0], 0, 1, 32), _square(got[1], 0, 1, 32))
    assert "forward" not in vars(tiny.pipeline.unet)


def test_folded_squares_on_random_sd_and_sdxl():
    """SD / SDXL: the squares are the UNet's sample_size (16 latents = 32 pixels); batch-shaped inputs such as
    SDXL's added_cond_kwargs follow the fold, a step hook sees the whole canvas, and each square's prediction
    depends on its own prompt only (compared on the UNet output: the VAE decoder's attention spans the canvas)."""
    quads = [(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.5, 0.5, 1, 1)]
    for kind, pipe in (("sd", tiny_sd_pipeline(seed=0)), ("sdxl", tiny_sdxl_pipeline(seed=0))):
        loaded = _loaded(pipe, kind)
        assert cell_grid([_layout(quads)], (32, 32), training_size(pipe.unet)) == (2, 2)
        preds = []
        for last in ("grey", "pink"):
            lay = _layout(quads, prompts=["red", "blue", "green", last], base="a room", width=64, height=64)
            seen = []
            with regional_fields(loaded, [lay, lay]) as fields:
                images = layout_images([lay, lay], [0, 1], guidance=5.0)
                hook = seen.append  # the StepContext of every UNet forward
                out = draw(loaded, SamplingRequest(images, steps=1, height=64, width=64, step_hook=hook, **fields))
            seen = [ctx.noise_pred for ctx in seen]
            assert out.shape == (2, 64, 64, 3) and seen[0].shape == (4, 4, 32, 32), kind  # [uncond; cond] latents
            preds.append(seen[0])
        assert torch.equal(preds[0][..., :16, :16], preds[1][..., :16, :16]), kind
        assert not torch.equal(preds[0][..., 16:, 16:], preds[1][..., 16:, 16:]), kind


def test_regional_options_are_checked(tiny):
    lay = _row(["a", "b"])
    for options, message in (
        ({"cells": "on"}, "cells must be one of: auto, off"),
        ({"fold_until": 0}, r"fold_until must be a number in \(0, 1\]"),
        ({"base_in_boxes": "no"}, "base_in_boxes must be true or false"),
    ):
        with pytest.raises(FairdiffError, match=message):
            draw_layouts(tiny, [lay], [0], steps=1, **options)


def test_base_in_boxes_false_keeps_the_base_out_of_boxed_pixels():
    lay = _layout([(0, 0, 0.5, 1)], base="a base")
    tokens = BoxTokens(*torch.zeros(2, 1, 1, 2, 6))
    for base_in_boxes, boxed_sees_base in ((True, True), (False, False)):
        proc = RegionalAttnProcessor([lay], tokens, size=(1, 2), base_in_boxes=base_in_boxes)
        mask = proc.mask(2, 2, 3, torch.float32, "cpu")  # (rows, 1, 2 pixels, 3 base + 2 box keys)
        allowed = torch.isfinite(mask[:, 0])
        assert allowed[1, 0, :3].all().item() == boxed_sees_base  # cond row, boxed pixel, base keys
        assert allowed[1, 1, :3].all() and not allowed[1, 1, 3:].any()  # the pixel in no box: base only
        assert allowed[1, 0, 3:].all()
