"""Mitigations: the fixes an audit compares as arms.

- `fairdiff.mitigate.edit`: the closed-form cross-attention edit (UCE, Gandikota et al. 2024), saved as an edit
  file of weight deltas, or as a LoRA (SVD of the deltas).
- `fairdiff.mitigate.training` / `align` / `balanced`: the fairness LoRA (distributional alignment, Shen et al.
  2024; or plain diffusion loss on balanced world renders) and the same recipe as a full fine-tune of W.
- `fairdiff.mitigate.guidance`: Fair Diffusion-style semantic guidance through the sampling seam's step hook.
"""

from fairdiff.mitigate import align, balanced  # noqa: F401, E402  (each registers its training method)
