"""CUDA graphs for parallel training: each forward/backward pass and the optimiser step replayed, not relaunched.

With all adapters of an experiment in one pass (:mod:`lorasum.train.parallel`), a step of the
paper's setting still launches about 5,000 kernels from Python, and as adapters finish and the
passes shrink the step becomes bound by the host (about 210 ms a step for SmolLM2 whatever the
number of tokens; BENCHMARKS.md). A CUDA graph records the kernels of a pass once and replays
them with one launch (PyTorch's "whole-network capture", torch.cuda.graph). Replays need static
shapes and addresses, so each pass is laid out in static buffers:

* the pass's examples are concatenated in one row of ``T`` tokens, ``T`` rounded up to a size of a
  geometric grid (:func:`bucket`: eight sizes per doubling, at least :data:`GRANULE`); the padding
  is cut into segments of at most ``max_seqlen`` tokens of its own (routed to no adapter, no
  loss), so it attends only to itself;
* variable-length attention (:mod:`lorasum.train.varlen`) gets the segment starts ``cu_seqlens``
  padded with zero-length segments to a static count, and ``max_seqlen`` fixed to the longest
  example the run allows;
* the scored positions (the LM head runs only there) are padded to a size of the same grid
  (four sizes per doubling) with weight 0; each scored token carries the weight ``1 / n_j`` of its
  adapter j (n_j: labelled tokens of adapter j in the step), so the summed loss of a pass is
  the same token-weighted mean per adapter as the eager path's.

One graph is captured per shape (tokens, scored positions, segments), lazily, after one eager
warm-up pass whose gradients, loss sums and random-number state are then put back, so a capture
changes nothing; all graphs share one memory pool (a pass leaves no tensor alive in it). Past
:data:`_MAX_GRAPHS` shapes a pass is padded to the smallest captured shape that holds it (a pass
larger than all of them is still captured): a pass never falls back to the eager launches, which
are bound by the host (about 200 ms a step for SmolLM2 with any number of tokens). The
GPU memory bounds the graphs too: each shape adds to the pool (blocks of a larger pass do not fit the
holes that smaller ones left; on an 80 GB H100, twelve shapes of GPT-2 passes held 52 GiB before the LM
head's NLL was computed in chunks, :func:`lorasum.evaluate.nll.head_nll`), so once the
free memory is less than a new shape would take by the captures' measured memory per token, a pass of
a new shape is padded to a captured shape that holds it or, if none does, cut into pieces that the
largest captured shape holds (:func:`split_to_fit`; eagerly only an example that no shape holds), and
the graphs stay; a capture that runs out of memory anyway releases every graph and their pool, and the eager
passes take over. The
optimiser step (per-adapter gradient clip and AdamW, :class:`lorasum.train.parallel._AdamW`, with
the learning rates and bias corrections in device tensors) is one more graph. A capture that
fails (an older PyTorch, a model that synchronises with the host) turns the graphs off with one
warning and the step runs eagerly from then on.

The result is that of the eager passes (same routing, same per-adapter loss weights, padding
isolated), up to float summation order; dropout masks are other draws.
"""

from __future__ import annotations

import logging
import math
import time
from itertools import chain

import numpy as np

import torch

from lorasum.data.tokenize import IGNORE_INDEX
from lorasum.evaluate.nll import _split_head, _to, _unwrap, fast_attention, head_nll

__all__ = ["GRANULE", "GraphedPasses", "bucket", "split_to_fit", "static_layout"]

log = logging.getLogger("lorasum")

#: the smallest pass (tokens) and scored-position count; larger sizes lie on the grid of :func:`bucket`.
GRANULE = 1024
_TOKENS_PER_OCTAVE = 8  # sizes of a pass per doubling: at most 12.5 % padding
_SCORED_PER_OCTAVE = 4  # sizes of the scored positions per doubling (the LM head is a small part of a pass)
_MAX_GRAPHS = 64  # shapes captured before passes are padded to a captured shape


def bucket(n: int, granule: int, per_octave: int) -> int:
    """The smallest size ``>= n`` on a geometric grid: multiples of ``max(granule, 2**floor(log2(n - 1)) /
    per_octave)``, at least ``granule``. With ``granule`` and ``per_octave`` powers of two every size is a
    multiple of ``granule``, less than ``n + max(granule, n / per_octave)``, and the sizes up to ``m`` number
    about ``per_octave * log2(m / granule)``: few distinct shapes (captured graphs) for little padding."""
    if granule < 1 or per_octave < 1:
        raise ValueError(f"bucket: granule {granule} and per_octave {per_octave} must be at least 1")
    if n <= granule:
        return granule
    step = max(granule, (1 << (n - 1).bit_length() - 1) // per_octave)
    return -(-n // step) * step


def _round_up(n: int, granule: int) -> int:
    return max(granule, -(-n // granule) * granule)


def static_layout(part: list, pad_id: int, n_answer: torch.Tensor, k: int, max_seqlen: int,
                  granule: int = GRANULE, shape: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor]:
    """The static-shape layout of one forward pass (CPU tensors).

    Args:
        part: (example, adapter index) pairs (:class:`lorasum.data.tokenize.Encoded` examples,
            each at most ``max_seqlen`` tokens).
        pad_id: token id written in padding.
        n_answer: (k,) labelled tokens of each adapter in the whole step (the loss weight is 1/n).
        k: number of adapters.
        max_seqlen: the longest segment allowed (padding is cut into segments of at most this).
        granule: the smallest T and N; T and N lie on the grid of :func:`bucket` (multiples of it when it
            is a power of two).
        shape: (T, N, S) to lay the pass out in instead (a captured graph's shape; see
            :func:`fits`), each at least what the pass needs.

    Returns:
        ``input_ids``, ``position_ids``, ``groups`` (1, T) int64 (groups: adapter of each token,
        -1 on padding); ``cu_seqlens`` (S,) int32, segment starts then the total, padded with T;
        ``flat`` (N,) int64 scored positions (the token at ``flat + 1`` is predicted), ``targets``
        (N,) int64, ``weight`` (N,) float32 and ``owner`` (N,) int64 (k on padding). Without
        ``shape``, T and N are on the grid of :func:`bucket`; S is a multiple of 64 and at least T / 32 + 1.
        An example's first token is never a target (position t predicts token t + 1 of the same example
        only), whatever its label, as in :func:`lorasum.train.packing.pack`.

    Raises:
        ValueError: no examples, ``max_seqlen`` < 1, an adapter index outside [0, k), an example longer
            than ``max_seqlen``, or the pass does not fit ``shape``.
    """
    if not part or max_seqlen < 1:
        raise ValueError(f"static_layout: {len(part)} examples, max_seqlen {max_seqlen}: need at least one of "
                         "each")
    # one conversion of the pass's Python lists to arrays, then whole-array operations: the host lays out a
    # pass while the GPU replays the previous one, and a step of the paper's setting has up to 168 examples
    lengths = [len(e.input_ids) for e, _ in part]
    if max(lengths) > max_seqlen:
        raise ValueError(f"static_layout: an example of {max(lengths)} tokens is longer than max_seqlen {max_seqlen}")
    adapters = [j for _, j in part]
    if not all(0 <= j < k for j in adapters):
        raise ValueError(f"static_layout: adapter index {next(j for j in adapters if not 0 <= j < k)} outside "
                         f"[0, {k})")
    t = sum(lengths)
    total = bucket(t, granule, _TOKENS_PER_OCTAVE) if shape is None else shape[0]
    if t > total:
        raise ValueError(f"static_layout: a pass of {t} tokens does not fit {total}")
    # padding: segments of its own, at most max_seqlen long, routed to no adapter (-1)
    full, rest = divmod(total - t, max_seqlen)
    pads = [max_seqlen] * full + ([rest] if rest else [])
    seg_lengths = np.array(lengths + pads, dtype=np.int64)
    starts = np.zeros(len(seg_lengths), dtype=np.int64)
    np.cumsum(seg_lengths[:-1], out=starts[1:])
    input_ids = np.full(total, pad_id, dtype=np.int64)
    input_ids[:t] = np.fromiter(chain.from_iterable(e.input_ids for e, _ in part), dtype=np.int64, count=t)
    labels = np.full(total, IGNORE_INDEX, dtype=np.int64)
    labels[:t] = np.fromiter(chain.from_iterable(e.labels for e, _ in part), dtype=np.int64, count=t)
    # the first token of an example is not predicted from the previous example (loss_on: all labels it)
    labels[starts[:len(part)]] = IGNORE_INDEX
    groups = np.repeat(np.array(adapters + [-1] * len(pads), dtype=np.int64), seg_lengths)
    position_ids = np.arange(total, dtype=np.int64) - np.repeat(starts, seg_lengths)
    n_seg = _round_up(max(len(starts) + 1, total // 32 + 1), 64) if shape is None else shape[2]
    if len(starts) + 1 > n_seg:
        raise ValueError(f"static_layout: {len(starts)} segments do not fit {n_seg}")
    cu = np.full(n_seg, total, dtype=np.int32)
    cu[:len(starts)] = starts
    flat = np.flatnonzero(labels[1:] != IGNORE_INDEX)  # position t predicts token t + 1
    n_scored = bucket(flat.size, granule, _SCORED_PER_OCTAVE) if shape is None else shape[1]
    if flat.size > n_scored:
        raise ValueError(f"static_layout: {flat.size} scored positions do not fit {n_scored}")
    owner = np.full(n_scored, k, dtype=np.int64)
    owner[:flat.size] = groups[flat]
    weight = np.zeros(n_scored, dtype=np.float32)
    weight[:flat.size] = (1.0 / n_answer.float().numpy())[owner[:flat.size]]
    targets = np.zeros(n_scored, dtype=np.int64)
    targets[:flat.size] = labels[flat + 1]
    padded_flat = np.zeros(n_scored, dtype=np.int64)
    padded_flat[:flat.size] = flat
    out = {"input_ids": input_ids[None], "position_ids": position_ids[None], "groups": groups[None],
           "cu_seqlens": cu, "flat": padded_flat, "targets": targets, "weight": weight, "owner": owner}
    return {name: torch.from_numpy(a) for name, a in out.items()}


def shape_of(layout: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(T, N, S) of a :func:`static_layout`: tokens, scored positions, segment starts."""
    return layout["input_ids"].shape[1], layout["flat"].shape[0], layout["cu_seqlens"].shape[0]


def fits(part: list, layout: dict[str, torch.Tensor], shape: tuple[int, int, int], max_seqlen: int) -> bool:
    """Whether the pass ``part`` (laid out as ``layout``) can be laid out in ``shape`` (T, N, S): enough
    tokens and scored positions, and segment starts for its examples, the padding cut in segments of at
    most ``max_seqlen`` tokens, and the total."""
    total, n_scored, n_seg = shape
    used = sum(len(e.input_ids) for e, _ in part)
    scored = int(layout["weight"].ne(0).sum())
    return total >= used and n_scored >= scored and n_seg >= len(part) + -(-(total - used) // max_seqlen) + 1


def _scored(example) -> int:
    """Positions of an example whose next token is scored in :func:`static_layout` (its first label never is)."""
    return sum(1 for v in example.labels[1:] if v != IGNORE_INDEX)


def split_to_fit(part: list, shape: tuple[int, int, int], max_seqlen: int) -> list[list] | None:
    """Cut the pass ``part`` ((example, adapter) pairs), in order, into the fewest consecutive pieces that
    :func:`static_layout` can each lay out in ``shape`` (T, N, S), filling each piece greedily; None when one
    example alone does not fit. Splitting a pass changes nothing but the order of float sums: each example's
    loss weight is its adapter's over the whole step."""
    total, n_scored, n_seg = shape

    def fits_piece(examples: int, tokens: int, positions: int) -> bool:
        padding_segments = -(-(total - tokens) // max_seqlen)
        return tokens <= total and positions <= n_scored and examples + padding_segments + 1 <= n_seg

    pieces: list[list] = [[]]
    used = scored = 0
    for item in part:
        n, m = len(item[0].input_ids), _scored(item[0])
        if not fits_piece(1, n, m):
            return None
        if pieces[-1] and not fits_piece(len(pieces[-1]) + 1, used + n, scored + m):
            pieces.append([])
            used = scored = 0
        pieces[-1].append(item)
        used, scored = used + n, scored + m
    return pieces


class GraphedPasses:
    """Runs the passes and the optimiser step of :func:`lorasum.train.parallel.train_adapters` from
    static buffers: replayed CUDA graphs on CUDA, or the same computation eagerly (``capture=False``:
    the CPU, and the reference the tests compare with).

    Args:
        model: the causal LM with :class:`~lorasum.train.parallel._ParallelLoRA` layers in place.
        router: their router.
        optimizer: the :class:`~lorasum.train.parallel._AdamW` of their factors.
        k: number of adapters.
        max_seqlen: the longest example of the run (tokens).
        max_grad_norm: per-adapter gradient clip, or None.
        capture: record CUDA graphs (needs a CUDA model).

    Raises:
        ValueError: the model's logits are not ``lm_head(hidden)`` (no decoder/head split).
    """

    def __init__(self, model, router, optimizer, k: int, max_seqlen: int, max_grad_norm: float | None,
                 capture: bool):
        parts = _split_head(_unwrap(model))
        if parts is None:
            raise ValueError("static passes need a model whose logits are lm_head(hidden)")
        self.decoder, self.head = parts
        self.router, self.optimizer, self.k = router, optimizer, k
        self.max_seqlen, self.max_grad_norm = max_seqlen, max_grad_norm
        self.device = next(model.parameters()).device
        self.capture = capture and self.device.type == "cuda"
        self.step_nll = torch.zeros(k + 1, device=self.device)  # per-adapter NLL sums of the step (k: padding)
        optimizer.zero_grad()  # static gradients (views of the optimiser's flat buffers), accumulated in place
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict]] = {}
        self._opt: tuple[torch.cuda.CUDAGraph, torch.Tensor] | None = None
        self._pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.captured = 0  # graphs captured
        self.capture_seconds = 0.0  # wall time of the captures (warm-up passes included)
        self.padded = 0  # passes laid out in a larger captured shape (past _MAX_GRAPHS)
        self.split = 0  # passes cut into pieces of captured shapes (too little GPU memory left for a new capture)
        self.eager = 0  # passes run eagerly because too little GPU memory was left for a new capture
        self._warned_cap = False
        self._warned_memory = False
        self._bytes_per_token = 0.0  # the most a capture added to the memory reserved (warm-up and pool), per token

    # -- one pass -------------------------------------------------------------------------
    def _body(self, s: dict[str, torch.Tensor]) -> None:
        """Forward, backward (gradients accumulate) and the per-adapter NLL sums of one pass."""
        self.router.route(s["groups"])
        with fast_attention(self.device):
            hidden = self.decoder(input_ids=s["input_ids"], position_ids=s["position_ids"], attention_mask=None,
                                  use_cache=False, cu_seq_lens_q=s["cu_seqlens"], cu_seq_lens_k=s["cu_seqlens"],
                                  max_length_q=self.max_seqlen, max_length_k=self.max_seqlen)[0]
            nll = head_nll(self.head, hidden.flatten(0, 1).index_select(0, s["flat"]), s["targets"])
        (nll * s["weight"]).sum().backward()
        self.step_nll.index_add_(0, s["owner"], nll.detach())

    def run_part(self, part: list, pad_id: int, n_answer: torch.Tensor) -> None:
        """Lay out the pass ``part`` ((example, adapter) pairs) with :func:`static_layout` and run it:
        gradients and ``step_nll`` accumulate. Past :data:`_MAX_GRAPHS` captured shapes, the pass is laid
        out in the smallest captured shape that holds it, if one does."""
        host = static_layout(part, pad_id, n_answer, self.k, self.max_seqlen)
        key = shape_of(host)
        if self.capture and key not in self._graphs:
            short = self._graphs and not self._room_for_capture(key[0])
            if len(self._graphs) >= _MAX_GRAPHS and not self._warned_cap:
                self._warned_cap = True
                log.info("%d CUDA graphs captured; from now on a pass of a new shape is padded to a captured one "
                         "that holds it (or captured, if none does)", len(self._graphs))
            if short or len(self._graphs) >= _MAX_GRAPHS:
                held = [shape for shape in self._graphs if fits(part, host, shape, self.max_seqlen)]
                if held:  # the least padding: fewest tokens, then fewest scored positions
                    key = min(held)
                    host = static_layout(part, pad_id, n_answer, self.k, self.max_seqlen, shape=key)
                    self.padded += 1
                elif short and (pieces := split_to_fit(part, max(self._graphs), self.max_seqlen)):
                    # no memory for another graph and no captured shape holds the pass: cut it into pieces that
                    # the largest captured shape holds (gradients accumulate; the loss weights are the step's)
                    self.split += 1
                    for piece in pieces:
                        self.run_part(piece, pad_id, n_answer)
                    return
                elif short:  # an example no captured shape holds: this pass runs eagerly, the graphs stay
                    self.eager += 1
                    self._body({n: _to(t, self.device) for n, t in host.items()})
                    self.router.clear()
                    return
        self.run_pass(host)

    def _room_for_capture(self, tokens: int) -> bool:
        """Whether the GPU has memory left to capture a pass of ``tokens`` tokens: 1.25 times what the
        captures so far added, per token, to the memory PyTorch reserves (the eager warm-up and the growth of
        the graphs' pool), and 1 GiB. Cached blocks are returned to the device first (a capture allocates its
        pool from free device memory). When not, passes of new shapes are padded to a captured shape or run
        eagerly, rather than running out of memory in a capture."""
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        need = 1.25 * self._bytes_per_token * tokens + (1 << 30)
        enough = free >= need
        if not enough and not self._warned_memory:
            self._warned_memory = True
            log.info("%d CUDA graphs captured and %.1f GiB of GPU memory free (a pass of %d tokens would take about "
                     "%.1f GiB to capture): a pass of a new shape is now padded to a captured one that holds it, or "
                     "run eagerly", len(self._graphs), free / 2 ** 30, tokens, need / 2 ** 30)
        return enough

    def run_pass(self, host: dict[str, torch.Tensor]) -> None:
        """Run one pass laid out by :func:`static_layout`: gradients and ``step_nll`` accumulate."""
        key = shape_of(host)
        if not self.capture:
            self._body({n: _to(t, self.device) for n, t in host.items()})
            self.router.clear()
            return
        if key not in self._graphs:
            static = {n: torch.empty(t.shape, dtype=t.dtype, device=self.device) for n, t in host.items()}
            for n, t in host.items():
                static[n].copy_(_pinned(t), non_blocking=True)
            started = time.perf_counter()
            if not self._graphs:  # later captures were preceded by _room_for_capture, which emptied the cache
                torch.cuda.empty_cache()
            before = torch.cuda.memory_reserved(self.device)
            graph = self._capture_pass(static)
            seconds = time.perf_counter() - started
            self.capture_seconds += seconds
            log.debug("CUDA graph %d: a pass of %d tokens, %d scored positions, %d segments captured in %.2f s",
                      len(self._graphs) + 1, *key, seconds)
            if graph is None:  # capture failed: its memory released, eager from now on
                del static
                self._release()
                self._body({n: _to(t, self.device) for n, t in host.items()})
                self.router.clear()
                return
            self._bytes_per_token = max(self._bytes_per_token,
                                        (torch.cuda.memory_reserved(self.device) - before) / max(1, key[0]))
            self._graphs[key] = (graph, static)
        graph, static = self._graphs[key]
        for n, t in host.items():
            static[n].copy_(_pinned(t), non_blocking=True)
        graph.replay()

    def _capture_pass(self, static: dict[str, torch.Tensor]) -> torch.cuda.CUDAGraph | None:
        """Warm up once eagerly (then put gradients, loss sums and the random state back) and capture."""
        grads = [p.grad for p in self.optimizer.params]
        saved_grads = [g.clone() for g in grads]
        saved_nll = self.step_nll.clone()
        rng = torch.cuda.get_rng_state(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side):
                self._body(static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.router.clear()
            torch._foreach_copy_(grads, saved_grads)
            self.step_nll.copy_(saved_nll)
            torch.cuda.set_rng_state(rng, self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self._body(static)
        except Exception as e:  # noqa: BLE001 - any capture failure: fall back to eager passes
            return self._give_up(e, grads, saved_grads, saved_nll, rng)
        finally:
            self.router.clear()  # the mask of the capture lives in the pool: no reference may outlive it
        self.captured += 1
        return graph

    def _give_up(self, error, grads, saved_grads, saved_nll, rng):
        torch.cuda.synchronize(self.device)
        torch._foreach_copy_(grads, saved_grads)
        self.step_nll.copy_(saved_nll)
        torch.cuda.set_rng_state(rng, self.device)
        log.warning("CUDA graphs off for this training (%s: %s); the passes run eagerly", type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "")
        self.capture = False
        self._graphs.clear()
        return None

    def _release(self) -> None:
        """Drop every graph and the memory pool they share, and return the cached memory to the device
        (after a failed capture, e.g. out of memory, so that the eager passes have it)."""
        import gc

        self._graphs.clear()
        if self._opt:
            self._opt = None
        self._pool = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    # -- the optimiser step ---------------------------------------------------------------------
    def _opt_body(self, scalars: torch.Tensor) -> None:
        """Clip, AdamW step and zeroed gradients; ``scalars``: (k + 2,) learning rates, bias corrections."""
        if self.max_grad_norm is not None:
            self.optimizer.clip(self.max_grad_norm)
        self.optimizer.step(scalars[:self.k], bias=scalars[self.k:])
        self.optimizer.zero_grad()

    def optimizer_step(self, lr: torch.Tensor) -> None:
        """One optimiser step with learning rates ``lr`` (k,) float32 on the CPU; gradients are zeroed."""
        opt = self.optimizer
        opt.steps += 1
        bias = torch.tensor([1 - opt.beta1 ** opt.steps, math.sqrt(1 - opt.beta2 ** opt.steps)], dtype=torch.float64)
        host = torch.cat([lr.float(), bias.float()])
        if not self.capture:
            self._opt_body(_to(host, self.device))
            return
        if self._opt is None:
            scalars = torch.empty(self.k + 2, device=self.device)
            scalars.copy_(_pinned(host), non_blocking=True)
            graph = torch.cuda.CUDAGraph()
            try:  # no warm-up: it would take a step; the step's kernels need no lazy initialisation
                with torch.cuda.graph(graph, pool=self._pool):
                    self._opt_body(scalars)
            except Exception as e:  # noqa: BLE001
                log.warning("CUDA graph of the optimiser step off (%s); it runs eagerly", type(e).__name__)
                torch.cuda.synchronize(self.device)
                self._opt_body(scalars)
                self._opt = False
                return
            self._opt = (graph, scalars)
        elif self._opt is False:
            self._opt_body(_to(host, self.device))
            return
        graph, scalars = self._opt
        scalars.copy_(_pinned(host), non_blocking=True)
        graph.replay()

    def take_losses(self, n_answer: torch.Tensor) -> torch.Tensor:
        """The step's mean NLL per adapter (k,) on the device; resets the sums."""
        losses = self.step_nll[:self.k] / n_answer
        self.step_nll.zero_()
        return losses


def _pinned(t: torch.Tensor) -> torch.Tensor:
    return t.pin_memory() if torch.cuda.is_available() else t
