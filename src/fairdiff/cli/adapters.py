"""`fairdiff adapters ...`: inspect, convert, compose and merge LoRA files (PEFT, diffusers, kohya).

Heavy imports stay in the command bodies so `--help` is instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from fairdiff.cli.app import app, console, expected_errors
from fairdiff.errors import FairdiffError

adapters_app = typer.Typer(
    help="LoRA adapters: inspect, convert (kohya/diffusers -> PEFT), compose, merge into a model.",
    no_args_is_help=True,
)
app.add_typer(adapters_app, name="adapters")

_ALLOW_PICKLE = typer.Option(False, "--allow-pickle", help="Read pickled (.bin/.pt) weights; they can run code.")
_LAYERS_PER_BLOCK = typer.Option(
    None, "--layers-per-block", help="UNet layers per block for kohya SDXL sgm keys (default 2: SD 1.x, SDXL)."
)


def _unet_config(layers_per_block: int | None):
    return None if layers_per_block is None else {"layers_per_block": layers_per_block}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _write_record(out: Path, name: str, record: dict) -> None:
    from fairdiff.provenance import library_versions

    (out / name).write_text(json.dumps({**record, "versions": library_versions()}, indent=2, default=str) + "\n")


@adapters_app.command("inspect")
def adapters_inspect(
    file: Path = typer.Argument(..., help="Adapter: PEFT directory, diffusers or kohya .safetensors file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    top: int = typer.Option(5, "--top", help="Show the N layers with the largest delta norms."),
    allow_pickle: bool = _ALLOW_PICKLE,
    layers_per_block: int = _LAYERS_PER_BLOCK,
) -> None:
    """Format, ranks, alphas, targets per component, size, parameters, delta norms ||s B A||_F."""
    with expected_errors():
        from fairdiff.adapters.loading import load_adapter
        from fairdiff.adapters.summary import summarize
        from fairdiff.checks import check_count

        check_count(top, "--top", minimum=0)
        adapter = load_adapter(file, allow_pickle=allow_pickle, unet_config=_unet_config(layers_per_block))
        summary = summarize(adapter, file)
        if as_json:
            console.print_json(json.dumps(summary.as_dict(), default=str))
            return
        console.print(
            f"[bold]{file}[/]: {summary.format} LoRA, {_size(summary.size_bytes)} on disk, "
            f"{summary.parameters:,} parameters ({', '.join(summary.dtypes)})",
            highlight=False,
        )
        table = Table("component", "targets", "linear / conv", "rank(s)", "alpha(s)", "scale(s)")
        for component, s in summary.components.items():
            table.add_row(
                component,
                str(s.targets),
                f"{s.kinds['linear']} / {s.kinds['conv']}",
                ", ".join(map(str, s.ranks)),
                ", ".join(f"{a:g}" for a in s.alphas),
                ", ".join(f"{x:g}" for x in s.scales),
            )
        console.print(table)
        stats = summary.norm_stats()
        console.print(
            "delta norms ||s B A||_F per layer: "
            + ", ".join(f"{k} {v:.4g}" for k, v in stats.items() if k != "total")
            + f"; all layers together {stats['total']:.4g}",
            highlight=False,
        )
        largest = Table("layer", "||s B A||_F", title=f"largest {top} deltas")
        for name, value in summary.largest(top):
            largest.add_row(name, f"{value:.4g}")
        console.print(largest)


@adapters_app.command("convert")
def adapters_convert(
    file: Path = typer.Argument(..., help="kohya or diffusers LoRA file (or a PEFT directory)."),
    out: Path = typer.Option(..., "--out", "-o", help="PEFT directory to write (one subdirectory per component)."),
    allow_pickle: bool = _ALLOW_PICKLE,
    layers_per_block: int = _LAYERS_PER_BLOCK,
) -> None:
    """Write an adapter in the PEFT format (adapter_config.json + adapter_model.safetensors)."""
    with expected_errors():
        from fairdiff.adapters.engine import AdapterSpec, adapter_record
        from fairdiff.adapters.formats import write_peft
        from fairdiff.adapters.loading import load_adapter
        from fairdiff.checks import check_output_dir
        from fairdiff.files import ensure_writable_dir

        check_output_dir(out)
        adapter = load_adapter(file, allow_pickle=allow_pickle, unet_config=_unet_config(layers_per_block))
        ensure_writable_dir(out)
        write_peft(adapter, out)
        _write_record(out, "convert.json", {"source": adapter_record(AdapterSpec(file), adapter)})
        parts = ", ".join(f"{c} ({len(layers)} layers)" for c, layers in adapter.components.items())
        console.print(f"wrote {adapter.format} -> PEFT: {parts} in [bold]{out}[/]", highlight=False)


@adapters_app.command("compose")
def adapters_compose(
    adapters: list[str] = typer.Argument(..., help="Adapters as FILE[:WEIGHT] (weight 1 if omitted)."),
    method: str = typer.Option("linear", "--method", help="linear (exact), svd, ties or dare."),
    density: float = typer.Option(0.5, "--density", help="ties/dare: fraction of delta entries kept."),
    rank: int = typer.Option(None, "--rank", help="Target rank (svd: required; ties/dare: default sum of ranks)."),
    seed: int = typer.Option(0, "--seed", help="dare: seed of the random drop."),
    out: Path = typer.Option(..., "--out", "-o", help="PEFT directory to write."),
    allow_pickle: bool = _ALLOW_PICKLE,
    layers_per_block: int = _LAYERS_PER_BLOCK,
) -> None:
    """Compose adapters into one new adapter on their dense deltas s_k B_k A_k; writes PEFT + compose.json."""
    with expected_errors():
        import statistics

        from fairdiff.adapters.compose import compose
        from fairdiff.adapters.engine import adapter_record, load_adapter_specs
        from fairdiff.adapters.formats import write_peft
        from fairdiff.checks import check_output_dir, check_seed
        from fairdiff.files import ensure_writable_dir

        check_seed(seed)
        check_output_dir(out)
        specs, loaded = load_adapter_specs(adapters, allow_pickle, _unet_config(layers_per_block))
        result = compose(loaded, [s.weight for s in specs], method=method, density=density, rank=rank, seed=seed)
        ensure_writable_dir(out)
        write_peft(result.adapter, out)
        errors = result.errors
        record = {
            **result.adapter.config,
            "sources": [adapter_record(s, a) for s, a in zip(specs, loaded, strict=True)],
            "relative_frobenius_error": {
                "max": result.max_error,
                "median": statistics.median(errors.values()) if errors else 0.0,
                "per_layer": errors,
            },
        }
        _write_record(out, "compose.json", record)
        how = "exact (no re-rank)" if not errors else f"re-ranked, relative error max {result.max_error:.3g}"
        console.print(
            f"composed {len(specs)} adapters by {method}: {how}; wrote [bold]{out}[/] and {out / 'compose.json'}",
            highlight=False,
        )


@adapters_app.command("merge")
def adapters_merge(
    adapters: list[str] = typer.Argument(..., help="Adapters as FILE[:WEIGHT] (weight 1 if omitted)."),
    model: str = typer.Option("tiny", "--model", "-m", help="'tiny' (bundled), a pipeline directory, or a hub id."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the merged pipeline (save_pretrained)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16 (merge math is fp32)."),
    allow_pickle: bool = _ALLOW_PICKLE,
) -> None:
    """Fold W0 + sum_k w_k s_k B_k A_k into the model's weights and save the pipeline; writes merge.json."""
    with expected_errors():
        from fairdiff.adapters.engine import adapter_record, attach_adapters, load_adapter_specs, parse_adapter_spec
        from fairdiff.checks import check_output_dir
        from fairdiff.files import ensure_writable_dir
        from fairdiff.models.loading import load_pipeline

        for text in adapters:  # bad FILE[:WEIGHT] fails before the model loads
            parse_adapter_spec(text)
        check_output_dir(out)
        loaded = load_pipeline(model, dtype=dtype)
        unet = getattr(loaded.pipeline, "unet", None)  # kohya SDXL keys are mapped with its config
        specs, adapter_list = load_adapter_specs(adapters, allow_pickle, getattr(unet, "config", None))
        handle = attach_adapters(loaded.pipeline, adapter_list)
        if loaded.kind == "tiny" and "text_encoder" in handle.targets:
            raise FairdiffError("the tiny model's text encoder is a pinned wheel and is not saved; adapt the UNet only")
        handle.set_combination([s.weight for s in specs])
        targets = {c: len(names) for c, names in handle.targets.items()}
        handle.fuse()
        ensure_writable_dir(out)
        loaded.pipeline.save_pretrained(out)
        _write_record(
            out,
            "merge.json",
            {
                "model": model,
                "model_source": loaded.source,
                "dtype": dtype,
                "adapters": [adapter_record(s, a) for s, a in zip(specs, adapter_list, strict=True)],
                "targets": targets,
            },
        )
        console.print(f"merged {len(specs)} adapters into {model}; wrote [bold]{out}[/]", highlight=False)
