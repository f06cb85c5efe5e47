"""The sampling seam: every image fairdiff draws goes through `draw(loaded, request)`, on the bundled model and on
SD 1.x / SDXL pipelines alike.

A `SamplingRequest` is one batch:

- `images`: one `ImageOptions(prompt, negative, seed, guidance)` per image. Image i is seeded by its own CPU
  `torch.Generator` (seed in [0, 2**64)), so any image can be redrawn alone in any batch size (equal up to the
  CPU kernels' choice for another batch shape). `guidance` None means the pipeline's default (tiny 3.0, SD 7.5,
  SDXL 5.0).
- `steps`, `height`/`width` (None: the pipeline's default; the tiny model's is 32x32, other sizes multiples of 8).
- `attention_processors`: one diffusers attention processor for every attention layer, or {layer name:
  processor} (names from `fairdiff.models.attention.attention_layers`); installed for the batch and restored
  after it (`fairdiff.models.attention.edit_attention`). For weight edits wrap `draw` in `edit_attention`.
- `cross_attention_kwargs`: passed to the pipeline, which hands it to every attention processor (`{"scale": s}`
  scales PEFT LoRA layers, as in diffusers).
- `step_hook`: called after every UNet forward with a `StepContext` (step index, timestep, the UNet's input
  sample, encoder hidden states, its other kwargs and its output); it may return a new UNet output. It is a
  forward hook on the UNet, so it acts the same on every UNet pipeline: the output it sees and returns is the raw
  one, before the pipeline's classifier-free guidance combines the halves (`[uncond; cond]`, negative prompt
  first, in SD, SDXL and the tiny model). `ctx.guided()` gives the prediction the pipeline will form from it and
  `ctx.raw_for(eps)` the output that makes the pipeline form `eps`, so a guidance method adds its term with
  `return ctx.raw_for(ctx.guided() + term)`. `ctx.predict(...)` runs extra UNet passes (e.g. edit prompts)
  without re-entering the hook.
- `autocast`: "auto" (default: bf16 autocast over fp32 weights on a CPU with native bf16, AVX512_BF16 or AMX; off
  everywhere else, fp32 as loaded), "on" (bf16 autocast on the CPU whatever its support) or "off"
  (`fairdiff.models.precision`). Images drawn with autocast differ from fp32 ones in the last grey levels, so
  the same seed gives the same bytes on the same kind of machine, not across AVX2 and AVX-512 machines.

Per-image guidance: the bundled pipeline takes a tensor of scales and draws the batch in one pass; SD/SDXL
pipelines take one float, so `draw` splits the batch into sub-batches of equal guidance (in order of first
appearance) and puts the images back in request order. A batch whose images share one guidance is one pipeline
call with a float, exactly the call fairdiff made before the request existed, so images are byte-identical to
it. `draw` returns uint8 images (B, H, W, 3).

`effective_guidance` says which guidance scale a run used; `autocast_used` whether a run sampled under bf16.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fairdiff.checks import check_seed
from fairdiff.errors import FairdiffError
from fairdiff.models.defaults import DEFAULT_AUTOCAST, DEFAULT_STEPS, check_autocast

if TYPE_CHECKING:  # torch loads on the first draw: arms and run readers import this module for ImageOptions
    import torch

    from fairdiff.models.loading import LoadedModel


@dataclass(frozen=True)
class ImageOptions:
    """What one image of a batch is drawn with. `guidance` None: the pipeline's default."""

    prompt: str
    negative: str = ""
    seed: int = 0
    guidance: float | None = None


@dataclass
class StepContext:
    """What a step hook sees at one UNet forward. `indices` are the request's images in this forward (all of them,
    or one equal-guidance sub-batch on SD/SDXL), `guidance` their scales (n,). Under classifier-free guidance
    (`cfg`) the batch dimension of `sample`, `encoder_hidden_states` and `noise_pred` is 2n: uncond half first."""

    step: int  # index of the UNet call in this pipeline call: one per denoising step (2 for Heun-type schedulers)
    timestep: torch.Tensor
    sample: torch.Tensor  # the UNet's input: scaled latents (pixels for the tiny model)
    encoder_hidden_states: torch.Tensor
    noise_pred: torch.Tensor  # the UNet's output
    cfg: bool
    indices: list[int]
    guidance: torch.Tensor
    unet: torch.nn.Module
    unet_kwargs: dict[str, Any] = field(default_factory=dict)  # added_cond_kwargs, cross_attention_kwargs, ...
    _state: Any = field(default=None, repr=False)

    def _g(self) -> torch.Tensor:
        g = self.guidance.to(device=self.noise_pred.device, dtype=self.noise_pred.dtype)
        return g.view(-1, *([1] * (self.noise_pred.dim() - 1)))

    def guided(self) -> torch.Tensor:
        """The prediction the pipeline forms from `noise_pred`: uncond + g (cond - uncond) under CFG, else itself."""
        if not self.cfg:
            return self.noise_pred
        uncond, cond = self.noise_pred.chunk(2)
        return uncond + self._g() * (cond - uncond)

    def raw_for(self, guided: torch.Tensor) -> torch.Tensor:
        """The UNet output that makes the pipeline form `guided` (keeps the uncond half; g = 0 sets both)."""
        import torch

        if not self.cfg:
            return guided
        uncond, _ = self.noise_pred.chunk(2)
        g = self._g()
        zero = g == 0
        cond = uncond + (guided - uncond) / torch.where(zero, torch.ones_like(g), g)
        cond = torch.where(zero, guided, cond)
        return torch.cat([torch.where(zero, guided, uncond), cond])

    def predict(self, sample: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None, **kwargs):
        """Another UNet pass at this timestep (the hook is not re-entered); unspecified inputs are this step's.
        A pass with another batch size must give its own batch-shaped kwargs (SDXL: `added_cond_kwargs`)."""
        args = {**self.unet_kwargs, **kwargs, "return_dict": False}
        self._state.inside = True
        try:
            return self.unet(
                self.sample if sample is None else sample,
                self.timestep,
                encoder_hidden_states=self.encoder_hidden_states
                if encoder_hidden_states is None
                else encoder_hidden_states,
                **args,
            )[0]
        finally:
            self._state.inside = False


StepHook = Callable[[StepContext], "torch.Tensor | None"]


@dataclass
class SamplingRequest:
    """One batch for `draw` (see the module docstring)."""

    images: Sequence[ImageOptions]
    steps: int = DEFAULT_STEPS
    height: int | None = None
    width: int | None = None
    attention_processors: object | Mapping[str, object] | None = None
    cross_attention_kwargs: dict[str, Any] | None = None
    step_hook: StepHook | None = None
    autocast: str = DEFAULT_AUTOCAST

    def check(self) -> None:
        """Raise a FairdiffError naming the first bad field."""
        if not self.images:
            raise FairdiffError("a sampling request needs at least one image")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise FairdiffError(f"steps must be an integer >= 1, got {self.steps!r}")
        for i, opt in enumerate(self.images):
            if not isinstance(opt, ImageOptions):
                raise FairdiffError(f"image {i}: expected ImageOptions, got {type(opt).__name__}")
            if not isinstance(opt.prompt, str) or not isinstance(opt.negative, str):
                raise FairdiffError(
                    f"image {i}: prompt and negative must be text, got {opt.prompt!r}, {opt.negative!r}"
                )
            check_seed(opt.seed, option=f"image {i}: seed")
            g = opt.guidance
            if g is not None and (isinstance(g, bool) or not isinstance(g, int | float) or not np.isfinite(g) or g < 0):
                raise FairdiffError(f"image {i}: guidance must be a finite number >= 0, got {g!r}")
        check_autocast(self.autocast, "autocast")
        if self.cross_attention_kwargs is not None and not isinstance(self.cross_attention_kwargs, Mapping):
            raise FairdiffError(f"cross_attention_kwargs must be a dict, got {type(self.cross_attention_kwargs)}")


class _HookState:
    def __init__(self) -> None:
        self.step = 0
        self.inside = False


@contextlib.contextmanager
def _installed_hook(unet: torch.nn.Module, hook: StepHook | None, indices: list[int], guidance: torch.Tensor):
    if hook is None:
        yield
        return
    import torch

    state = _HookState()
    n = len(indices)

    def forward_hook(module, args, kwargs, output):
        if state.inside:
            return None
        kw = dict(kwargs)
        sample = args[0] if args else kw.pop("sample")
        timestep = args[1] if len(args) > 1 else kw.pop("timestep")
        states = args[2] if len(args) > 2 else kw.pop("encoder_hidden_states", None)
        kw.pop("return_dict", None)
        pred = output[0] if isinstance(output, tuple) else output.sample
        ctx = StepContext(
            step=state.step,
            timestep=timestep,
            sample=sample,
            encoder_hidden_states=states,
            noise_pred=pred,
            cfg=sample.shape[0] == 2 * n,
            indices=list(indices),
            guidance=guidance,
            unet=module,
            unet_kwargs=kw,
            _state=state,
        )
        state.step += 1
        new = hook(ctx)
        if new is None:
            return None
        if not isinstance(new, torch.Tensor) or new.shape != pred.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise FairdiffError(
                f"step hook returned {got}; expected a tensor shaped like the UNet output {tuple(pred.shape)}"
            )
        new = new.to(dtype=pred.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else type(output)(sample=new)

    handle = unet.register_forward_hook(forward_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _accepts(pipeline, name: str) -> bool:
    params = inspect.signature(pipeline.__call__).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _to_uint8(loaded: LoadedModel, images) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)  # (B, H, W, 3) in [0, 1]
    if not np.isfinite(images).all():
        raise FairdiffError(f"model {loaded.name!r} produced NaN/Inf pixels (try --dtype float32)")
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def draw(loaded: LoadedModel, request: SamplingRequest) -> np.ndarray:
    """Draw one request on any supported pipeline: uint8 images (B, H, W, 3), image i from request.images[i]."""
    import torch

    from fairdiff.models.precision import sampling_autocast

    request.check()
    pipe = loaded.pipeline
    unet = getattr(pipe, "unet", None)
    if unet is None and (request.step_hook is not None or request.attention_processors is not None):
        raise FairdiffError(f"model {loaded.name!r} has no UNet: step hooks and attention processors need one")
    if request.cross_attention_kwargs is not None and not _accepts(pipe, "cross_attention_kwargs"):
        raise FairdiffError(f"model {loaded.name!r} ({type(pipe).__name__}) takes no cross_attention_kwargs")
    opts = list(request.images)
    default = effective_guidance(loaded, None)
    if any(o.guidance is None for o in opts) and any(o.guidance is not None for o in opts) and default is None:
        raise FairdiffError(f"model {loaded.name!r} has no default guidance: give every image a guidance scale")
    scales = [o.guidance if o.guidance is not None else default for o in opts]

    base: dict[str, Any] = {"num_inference_steps": request.steps, "output_type": "np"}
    base.update({k: v for k, v in (("height", request.height), ("width", request.width)) if v is not None})
    if request.cross_attention_kwargs is not None:
        base["cross_attention_kwargs"] = dict(request.cross_attention_kwargs)

    if loaded.kind == "tiny" or len(set(scales)) == 1:
        groups = [list(range(len(opts)))]  # tiny: one pass with a tensor of scales when they differ
    else:
        order: dict[float, list[int]] = {}
        for i, g in enumerate(scales):
            order.setdefault(g, []).append(i)
        groups = list(order.values())

    from fairdiff.models.attention import edit_attention

    out: list[np.ndarray | None] = [None] * len(opts)
    editing = edit_attention(unet, processors=request.attention_processors) if unet is not None else None
    with editing or contextlib.nullcontext():
        for idx in groups:
            kwargs = dict(base)
            g = [scales[i] for i in idx]
            if g[0] is not None and all(x is not None for x in g):
                kwargs["guidance_scale"] = float(g[0]) if len(set(g)) == 1 else torch.tensor(g, dtype=torch.float32)
            if all(o.guidance is None for o in opts):
                kwargs.pop("guidance_scale", None)  # the pipeline's own default, as every earlier release drew
            guidance = torch.tensor([x if x is not None else float("nan") for x in g], dtype=torch.float32)
            generators = [torch.Generator("cpu").manual_seed(int(opts[i].seed)) for i in idx]
            autocast = sampling_autocast(*_device_dtype(loaded), request.autocast)
            with _installed_hook(unet, request.step_hook, idx, guidance), autocast:
                images = pipe(
                    prompt=[opts[i].prompt for i in idx],
                    negative_prompt=[opts[i].negative for i in idx],
                    generator=generators,
                    **kwargs,
                ).images
            for i, img in zip(idx, _to_uint8(loaded, images), strict=True):
                out[i] = img
    return np.stack(out)


def _device_dtype(loaded: LoadedModel) -> tuple[torch.device, torch.dtype]:
    import torch

    pipe = loaded.pipeline
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    device = getattr(model, "device", None) or getattr(pipe, "device", torch.device("cpu"))
    return torch.device(device), getattr(model, "dtype", None) or getattr(pipe, "dtype", torch.float32)


def autocast_used(loaded: LoadedModel, mode: str = "auto") -> bool:
    """Whether `draw` with `autocast=mode` samples `loaded` under bf16 autocast (recorded in sidecars and runs)."""
    from fairdiff.models.precision import use_bf16_autocast

    return use_bf16_autocast(*_device_dtype(loaded), mode)


def effective_guidance(loaded: LoadedModel, guidance: float | None) -> float | None:
    """The guidance scale a run used: the one given, else the pipeline's own default."""
    if guidance is not None:
        return guidance
    param = inspect.signature(loaded.pipeline.__call__).parameters.get("guidance_scale")
    return None if param is None or param.default is inspect.Parameter.empty else float(param.default)
