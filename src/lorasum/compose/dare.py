"""DARE (drop and rescale) merging of LoRA adapters on their dense ΔW.

DARE (Yu et al. 2024, "Language Models are Super Mario", arXiv 2311.03099, eq. 2) sets each
entry of a task vector to 0 with probability p and multiplies the survivors by 1/(1 − p),
which keeps its expectation. The sparsified task vectors are then merged by

* ``dare_linear``: the weighted sum Σᵢ wᵢ DARE(ΔWᵢ) (DARE + task arithmetic, as in the paper);
* ``dare_ties``: TIES's sign election and disjoint mean (Yadav et al. 2023, arXiv 2306.01708,
  §3 steps 2–3) over τᵢ = wᵢ DARE(ΔWᵢ) (DARE replaces TIES's magnitude trim).

Randomness: one ``torch.Generator`` seeded with ``seed``; for each module in sorted path order
and each adapter in input order that has the module, one mask of d_out·d_in uniforms is drawn
(:func:`lorasum.compose.masks.dare_keep_mask`). The same seed gives the same result.
"""

from __future__ import annotations

import torch

from lorasum.adapters import Adapter
from lorasum.compose.dense import DenseDelta, dense_result, task_vectors
from lorasum.compose.masks import check_fraction, dare_rescale, disjoint_mean, elect_sign
from lorasum.compose.registry import compose_method
from lorasum.compose.sum import _check_weights, check_compatible
from lorasum.errors import ConfigError

__all__ = ["compose_dare_linear", "compose_dare_ties", "dare_task_vectors"]


def _floats(weights: list[float] | None) -> list[float] | None:
    return None if weights is None else [float(w) for w in weights]


def dare_task_vectors(adapters: list[Adapter], drop_prob: float, seed: int,
                      weights: list[float] | None = None):
    """Yield (module, stack) with ``stack[i] = wᵢ · DARE(ΔWᵢ)``, (N, d_out, d_in) float64, sorted by module.

    Adapters lacking a module contribute 0 and draw no random numbers for it.

    Raises:
        ConfigError: drop_prob outside [0, 1), a non-integer seed or bad weights.
        AdapterError: incompatible adapters.
    """
    check_compatible(adapters)
    ws = _check_weights(weights, len(adapters))
    p = check_fraction("drop_prob", drop_prob, allow_zero=True, allow_one=False)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    for module, stack in task_vectors(adapters, ws):
        for i, a in enumerate(adapters):
            if module in a.factors:
                stack[i] = dare_rescale(stack[i], p, gen)
        yield module, stack


@compose_method(name="dare_linear", exact=False, low_rank=False,
                reference="Yu et al. 2024, DARE, arXiv 2311.03099")
def compose_dare_linear(adapters: list[Adapter], drop_prob: float = 0.9, seed: int = 0,
                        weights: list[float] | None = None) -> DenseDelta:
    """DARE then weighted sum: Σᵢ wᵢ · DARE_p(ΔWᵢ); dense result, unbiased (E = Σᵢ wᵢ ΔWᵢ).

    Args:
        drop_prob: drop probability p in [0, 1) (default 0.9, the rate the paper shows to be harmless).
        seed: seed of the drop masks.
        weights: wᵢ (default all 1).

    Raises:
        ConfigError, AdapterError: see :func:`dare_task_vectors`.
    """
    deltas = {m: stack.sum(dim=0) for m, stack in dare_task_vectors(adapters, drop_prob, seed, weights)}
    return dense_result(adapters, deltas, {"method": "dare_linear", "drop_prob": drop_prob, "seed": seed,
                                           "weights": _floats(weights)})


@compose_method(name="dare_ties", exact=False, low_rank=False,
                reference="Yu et al. 2024, DARE, arXiv 2311.03099; Yadav et al. 2023, arXiv 2306.01708")
def compose_dare_ties(adapters: list[Adapter], drop_prob: float = 0.9, seed: int = 0,
                      weights: list[float] | None = None) -> DenseDelta:
    """DARE then TIES sign election and disjoint mean over τᵢ = wᵢ · DARE_p(ΔWᵢ); dense result.

    Raises:
        ConfigError, AdapterError: see :func:`dare_task_vectors`.
    """
    deltas = {m: disjoint_mean(stack, elect_sign(stack))
              for m, stack in dare_task_vectors(adapters, drop_prob, seed, weights)}
    return dense_result(adapters, deltas, {"method": "dare_ties", "drop_prob": drop_prob, "seed": seed,
                                           "weights": _floats(weights)})
