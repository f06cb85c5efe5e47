"""Benchmark: LoRA adapters in a UNet forward, fairdiff's slots vs PEFT, same run, same model, ratios to base.

One UNet forward at batch B x CFG (2B samples), timed in interleaved rounds (every variant once per round, so a
noisy shared machine slows all of them alike), median of the rounds:
  base; fairdiff merged; fairdiff unmerged single adapter; fairdiff 8 different adapters in one batch
  (per-sample rows, tiled for CFG); PEFT unmerged; PEFT `adapter_names` mixed batch; PEFT sequential
  `set_adapter` (8 forwards of one sample x CFG); merge and restore times; max |W - W0| of every base weight
  after N merge/unmerge cycles for fairdiff and PEFT in fp16 and bf16.
Adapters: 8 random rank-R LoRAs on to_q / to_k / to_v / to_out.0 (random weights time like trained ones).

CPU default: a small SD-shaped UNet (SD 1.5 block structure, channels 64/128/256/256, cross-attention 768,
32x32 latents) in fp32. `--device cuda --sd15`: the SD 1.5 UNet shape (320/640/1280/1280, 64x64 latents) in
fp16. Writes bench/results/adapters.md (or --out) with the machine and the command.

    nice -n 10 python bench/adapters.py [--rounds 5] [--cycles 100]
    python bench/adapters.py --device cuda --sd15 --rounds 20 --cycles 1000 --out bench/results/adapters-sd15.md
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from fairdiff.adapters import LoRAAdapter, LoRALayer, attach_adapters
from fairdiff.provenance import library_versions, machine_line

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
SD15_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,  # SD 1.5's config value (8 heads)
    norm_num_groups=32,
    in_channels=4,
    out_channels=4,
)
SMALL = dict(SD15_BLOCKS, block_out_channels=(64, 128, 256, 256), sample_size=32)  # CPU: minutes, not hours
SD15 = dict(SD15_BLOCKS, block_out_channels=(320, 640, 1280, 1280), sample_size=64)


def random_adapters(unet, n: int, rank: int, seed: int = 0) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """n adapters {module: (A (r, in), B (out, r))} on the attention projections, fp32 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    names = [name for name, _ in unet.named_modules() if name.endswith(tuple(f".{t}" for t in TARGETS))]
    out = []
    for _ in range(n):
        layers = {}
        for name in names:
            w = unet.get_submodule(name).weight
            A = torch.randn(rank, w.shape[1], generator=g) / w.shape[1] ** 0.5
            B = torch.randn(w.shape[0], rank, generator=g) * 0.02
            layers[name] = (A, B)
        out.append(layers)
    return out


def fairdiff_adapter(layers) -> LoRAAdapter:
    return LoRAAdapter({"model": {m: LoRALayer(A, B, alpha=A.shape[0], scale=1.0) for m, (A, B) in layers.items()}})


def peft_model(unet, adapters, rank: int):
    """PEFT on a copy of the UNet with the same adapters as a0..a{n-1} (scale 1: lora_alpha = r)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, lora_dropout=0.0)
    model = get_peft_model(copy.deepcopy(unet), cfg, adapter_name="a0")
    for i in range(1, len(adapters)):
        model.add_adapter(f"a{i}", cfg)
    with torch.no_grad():
        for i, layers in enumerate(adapters):
            for name, (A, B) in layers.items():
                module = model.base_model.model.get_submodule(name)
                module.lora_A[f"a{i}"].weight.copy_(A)
                module.lora_B[f"a{i}"].weight.copy_(B)
    model.base_model.set_adapter("a0")
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def max_drift(model, original: dict[str, torch.Tensor]) -> float:
    """max |W - W0| over the base weights (PEFT's base layers included under their original names)."""
    worst = 0.0
    for name, p in model.named_parameters():
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        if key in original:
            worst = max(worst, float((p.detach().float() - original[key].float()).abs().max()))
    return worst


def drift(unet, adapter_layers, rank: int, dtype: torch.dtype, cycles: int, device) -> tuple[float, float]:
    """(fairdiff, PEFT) max |W - W0| after `cycles` merge/unmerge cycles of one adapter in `dtype`."""
    base = copy.deepcopy(unet).to(device, dtype)
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    ours = copy.deepcopy(base)
    handle = attach_adapters(ours, [fairdiff_adapter(adapter_layers)])
    handle.set_combination([1.0])
    for _ in range(cycles):
        handle.merge()
        handle.unmerge()
    handle.detach()
    theirs = peft_model(base, [adapter_layers], rank).to(device, dtype)
    for _ in range(cycles):
        theirs.base_model.merge_adapter()
        theirs.base_model.unmerge_adapter()
    return max_drift(ours, original), max_drift(theirs, original)


def main() -> None:
    from diffusers import UNet2DConditionModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sd15", action="store_true", help="SD 1.5-shaped UNet in fp16 (for a GPU)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (the UNet sees 2x under CFG)")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=100, help="merge/unmerge cycles for the drift rows")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads; 1 by default: on a shared 2-core machine two OpenMP threads that busy-wait for each "
        "other under foreign load turned 0.2 s forwards into 10 s ones",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adapters.md")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.sd15 else torch.float32
    config = SD15 if args.sd15 else SMALL
    torch.manual_seed(0)

    cpu_unet = UNet2DConditionModel(**config).eval().requires_grad_(False)
    adapters = random_adapters(cpu_unet, args.adapters, args.rank)
    base = copy.deepcopy(cpu_unet).to(device, dtype)
    ours = copy.deepcopy(base)
    handle = attach_adapters(ours, [fairdiff_adapter(a) for a in adapters])
    theirs = peft_model(cpu_unet, adapters, args.rank).to(device, dtype)

    n = 2 * args.batch  # classifier-free guidance: cat([uncond, cond])
    g = torch.Generator().manual_seed(1)
    size = config["sample_size"]
    x = torch.randn(n, 4, size, size, generator=g).to(device, dtype)
    t = torch.tensor(500, device=device)
    c = (torch.randn(n, 77, 768, generator=g) * 0.5).to(device, dtype)
    rows = torch.eye(args.adapters)[torch.arange(args.batch) % args.adapters]  # (B, K): sample i -> adapter i
    names = [f"a{i % args.adapters}" for i in range(args.batch)] * 2  # PEFT needs one name per UNet sample

    @torch.no_grad()
    def run(model, **kw):
        return model(x, t, encoder_hidden_states=c, **kw).sample

    def fairdiff_state(state):
        def setup():
            handle.unmerge()
            if state == "per-sample":
                handle.set_per_sample(rows)
            else:
                handle.set_combination([1.0] + [0.0] * (args.adapters - 1))
                if state == "merged":
                    handle.merge()

        return setup

    def peft_sequential():
        with torch.no_grad():
            for i in range(args.batch):
                theirs.base_model.set_adapter(f"a{i % args.adapters}")
                theirs(x[i :: args.batch], t, encoder_hidden_states=c[i :: args.batch])  # sample i, uncond + cond
        theirs.base_model.set_adapter("a0")

    variants = {
        "base": (lambda: None, lambda: run(base)),
        "fairdiff merged": (fairdiff_state("merged"), lambda: run(ours)),
        "fairdiff unmerged, 1 adapter": (fairdiff_state("single"), lambda: run(ours)),
        f"fairdiff {args.adapters} adapters in one batch": (fairdiff_state("per-sample"), lambda: run(ours)),
        "PEFT unmerged, 1 adapter": (lambda: theirs.base_model.set_adapter("a0"), lambda: run(theirs)),
        f"PEFT adapter_names, {args.adapters} in one batch": (lambda: None, lambda: run(theirs, adapter_names=names)),
        f"PEFT sequential set_adapter, {args.adapters} adapters": (lambda: None, peft_sequential),
        "base again (A/A: the noise floor)": (lambda: None, lambda: run(base)),
    }

    # correctness first: the variants compute what they claim (and the adapters do change the output)
    plain = run(base)
    fairdiff_state("single")()
    single = run(ours)
    check = {"adapter effect: fairdiff 1 adapter vs base": float((single - plain).abs().max())}
    check["fairdiff vs PEFT, 1 adapter"] = float((single - run(theirs)).abs().max())
    fairdiff_state("per-sample")()
    mixed = run(ours)
    check["adapter effect: fairdiff mixed batch vs 1 adapter"] = float((mixed - single).abs().max())
    check["fairdiff vs PEFT adapter_names, mixed batch"] = float((mixed - run(theirs, adapter_names=names)).abs().max())
    fairdiff_state("merged")()
    check["fairdiff merged vs unmerged"] = float((run(ours) - single).abs().max())

    times: dict[str, list[float]] = {k: [] for k in variants}
    for setup, fn in variants.values():  # warm-up
        setup()
        fn()
    for _ in range(args.rounds):
        for name, (setup, fn) in variants.items():
            setup()
            times[name].append(timed(fn, device))
    handle.unmerge()

    merge_times, restore_times, peft_merge, peft_restore = [], [], [], []
    handle.set_combination([1.0] + [0.0] * (args.adapters - 1))
    for _ in range(max(3, args.rounds)):
        merge_times.append(timed(handle.merge, device))
        restore_times.append(timed(handle.unmerge, device))
        peft_merge.append(timed(theirs.base_model.merge_adapter, device))
        peft_restore.append(timed(theirs.base_model.unmerge_adapter, device))

    drifts = {
        str(d).removeprefix("torch."): drift(cpu_unet, adapters[0], args.rank, d, args.cycles, device)
        for d in (torch.float16, torch.bfloat16)
    }

    check["wall time of the whole benchmark, s"] = time.perf_counter() - started
    write_report(
        args, config, device, dtype, times, check, merge_times, restore_times, peft_merge, peft_restore, drifts
    )


def write_report(
    args, config, device, dtype, times, check, merge_times, restore_times, peft_merge, peft_restore, drifts
):
    import peft

    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["base"]
    targets = {
        "fairdiff merged": 1.01,
        "fairdiff unmerged, 1 adapter": 1.05,
        f"fairdiff {args.adapters} adapters in one batch": 1.3,
    }
    versions = library_versions()
    argv = " ".join(sys.argv[1:])
    lines = [
        "# LoRA adapters: fairdiff slots vs PEFT in a UNet forward",
        "",
        f"command: `nice -n 10 python bench/adapters.py {argv}`".replace("  ", " "),
        f"machine: {machine_line()}",
        f"python {versions['python']}, torch {versions['torch']}, diffusers {versions['diffusers']}, "
        f"peft {peft.__version__}",
        f"model: UNet2DConditionModel, SD 1.5 block structure, channels {config['block_out_channels']}, "
        f"cross-attention 768, {config['sample_size']}x{config['sample_size']} latents, "
        f"{str(dtype).removeprefix('torch.')}, on {device}; "
        f"batch {args.batch} x CFG = {2 * args.batch} samples per forward",
        f"adapters: {args.adapters} random LoRAs of rank {args.rank} on to_q/to_k/to_v/to_out.0, one slot each; "
        f"{args.rounds} interleaved rounds, median",
        "",
        "| variant | median s | min-max s | vs base | target |",
        "|---|---:|---:|---:|---|",
    ]
    for name, values in times.items():
        ratio = med[name] / base
        target = targets.get(name)
        verdict = "" if target is None else f"<= {target}x: {'met' if ratio <= target else 'NOT met'}"
        lines.append(f"| {name} | {med[name]:.3f} | {min(values):.3f}-{max(values):.3f} | {ratio:.3f}x | {verdict} |")
    lines += [
        "",
        "| merge / restore (all wrapped layers) | fairdiff | PEFT |",
        "|---|---:|---:|",
        f"| merge, median ms | {1e3 * statistics.median(merge_times):.1f} | "
        f"{1e3 * statistics.median(peft_merge):.1f} |",
        f"| restore, median ms | {1e3 * statistics.median(restore_times):.2f} | "
        f"{1e3 * statistics.median(peft_restore):.1f} |",
        "",
        f"| max abs drift of any base weight after {args.cycles} merge/unmerge cycles | fairdiff | PEFT |",
        "|---|---:|---:|",
        *[f"| {d} | {ours:.3g} | {theirs:.3g} |" for d, (ours, theirs) in drifts.items()],
        "",
        f"restore drift exactly 0: {'met' if all(o == 0 for o, _ in drifts.values()) else 'NOT met'}",
        f"(drift: copies of the model in each dtype on {device}; merge and unmerge only, no forward pass)",
        "",
        "| check (max abs difference of UNet outputs) | value |",
        "|---|---:|",
        *[f"| {k} | {v:.3g} |" for k, v in check.items()],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
