"""Magnitude pruning of the exact weighted sum of LoRA adapters (dense result).

ΔW = Σᵢ wᵢ ΔWᵢ per module, then all but the top-``density`` fraction of its entries by
magnitude are set to 0: magnitude-based pruning (Han et al. 2015, "Learning both Weights
and Connections", arXiv 1506.02626), here applied to the merged task vector as the
"magnitude" sparsifier of merge toolkits (cf. TIES's trim step, Yadav et al. 2023,
arXiv 2306.01708, which prunes each task vector before merging instead).
"""

from __future__ import annotations

import torch

from lorasum.adapters import Adapter
from lorasum.compose.dense import DenseDelta, dense_result, task_vectors, warn_trimmed_to_zero
from lorasum.compose.masks import check_fraction, top_magnitude_mask
from lorasum.compose.registry import compose_method
from lorasum.compose.sum import _check_weights, check_compatible

__all__ = ["compose_magnitude_prune"]


@compose_method(name="magnitude_prune", exact=False, low_rank=False,
                reference="Han et al. 2015, arXiv 1506.02626 (magnitude pruning) of the summed ΔW")
def compose_magnitude_prune(adapters: list[Adapter], density: float = 0.2,
                            weights: list[float] | None = None) -> DenseDelta:
    """Σᵢ wᵢ ΔWᵢ per module, keeping only its top-``density`` entries by |value|; dense result.

    Args:
        density: fraction of entries kept per module, in (0, 1] (1 keeps the exact sum).
        weights: wᵢ (default all 1).

    A module so small that ⌊density · n⌋ = 0 keeps no entry and becomes 0; that is logged as a
    warning (:func:`~lorasum.compose.dense.warn_trimmed_to_zero`), not refused.

    Raises:
        ConfigError: density outside (0, 1]; bad weights.
        AdapterError: incompatible adapters.
    """
    check_compatible(adapters)
    ws = _check_weights(weights, len(adapters))
    d = check_fraction("density", density)
    deltas = {}
    for module, stack in task_vectors(adapters, ws):
        total = stack.sum(dim=0)
        deltas[module] = torch.where(top_magnitude_mask(total, d), total, torch.zeros_like(total))
    warn_trimmed_to_zero("magnitude_prune", d, {m: x.numel() for m, x in deltas.items()})
    return dense_result(adapters, deltas, {"method": "magnitude_prune", "density": d, "weights": ws})
