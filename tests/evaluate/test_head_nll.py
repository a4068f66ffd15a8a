"""The chunked LM-head NLL (evaluate.nll.head_nll) against the plain cross-entropy of the full logits."""

import pytest
import torch
import torch.nn.functional as F

from lorasum.evaluate import nll as nll_module
from lorasum.evaluate.nll import compiled_head, head_nll


def _head(vocab=50, hidden=12, bias=False, frozen=True):
    torch.manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=bias)
    head.requires_grad_(not frozen)
    return head


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_hidden_gradients_equal_the_full_logits(chunk, bias, compiled):
    """Eager, and with the chunk functions compiled by torch.compile (Inductor's CPU code here)."""
    head = _head(bias=bias)
    hidden = torch.randn(17, 12, dtype=torch.float64).float()
    targets = torch.randint(0, 50, (17,))
    weights = torch.rand(17)  # a per-row weight, as the parallel passes' 1 / n_answer (and 0 on padding)
    weights[5] = 0.0
    a = hidden.clone().requires_grad_()
    b = hidden.clone().requires_grad_()
    plain = F.cross_entropy(head(a).float(), targets, reduction="none")
    with compiled_head(compiled):
        chunked = head_nll(head, b, targets, chunk=chunk)
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)
    (plain * weights).sum().backward()
    (chunked * weights).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)
    assert b.grad[5].abs().max() == 0  # a row of weight 0 gets no gradient
    assert head.weight.grad is None  # the frozen head gets none either


def test_without_gradients_only_the_values_are_computed():
    head = _head()
    hidden, targets = torch.randn(9, 12), torch.randint(0, 50, (9,))
    with torch.inference_mode():
        got = head_nll(head, hidden, targets, chunk=4)
    torch.testing.assert_close(got, F.cross_entropy(head(hidden), targets, reduction="none"))


def test_compiled_head_dispatches_each_chunk_to_the_compiled_functions_only_while_on(monkeypatch):
    """The switch, with spies in place of the compiled functions (their values are tested above)."""
    calls = {"nll": 0, "grad": 0}

    def spy(name, fn):
        def wrapped(*args):
            calls[name] += 1
            return fn(*args)
        return wrapped

    monkeypatch.setattr(nll_module, "_compiled", {"nll": spy("nll", nll_module._chunk_nll),
                                                  "grad": spy("grad", nll_module._chunk_nll_and_grad)})
    head = _head()
    hidden, targets = torch.randn(10, 12), torch.randint(0, 50, (10,))
    head_nll(head, hidden.requires_grad_(), targets, chunk=4)
    assert calls == {"nll": 0, "grad": 0}  # off by default
    with compiled_head():
        with compiled_head(False):  # a nested "off" does not turn an outer "on" off
            head_nll(head, hidden, targets, chunk=4)  # 3 chunks, with gradient
        with torch.no_grad():
            head_nll(head, hidden, targets, chunk=4)  # 3 chunks, values only
    assert calls == {"nll": 3, "grad": 3}
    head_nll(head, hidden, targets, chunk=4)
    assert calls == {"nll": 3, "grad": 3}  # off again on exit


def test_a_trainable_head_takes_the_plain_path_and_gets_its_gradient():
    head = _head(frozen=False)
    hidden, targets = torch.randn(9, 12), torch.randint(0, 50, (9,))
    head_nll(head, hidden, targets, chunk=4).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_on_cuda_in_bfloat16_autocast_it_equals_the_plain_path_and_captures_in_a_graph(compiled):
    """As the training passes run it: bf16 head under autocast, inside a CUDA graph."""
    with compiled_head(compiled):
        _check_cuda_graph()


def _check_cuda_graph():
    head = _head(vocab=4000, hidden=64).cuda().to(torch.bfloat16)
    hidden = torch.randn(700, 64, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, 4000, (700,), device="cuda")
    weights = torch.rand(700, device="cuda")
    a, b = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        plain = F.cross_entropy(head(a).float(), targets, reduction="none")
        chunked = head_nll(head, b, targets, chunk=256)
    torch.testing.assert_close(chunked, plain, rtol=1e-3, atol=1e-3)
    (plain * weights).sum().backward()
    (chunked * weights).sum().backward()
    torch.testing.assert_close(b.grad.float(), a.grad.float(), rtol=2e-2, atol=1e-4)
    static = hidden.clone().requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.autocast("cuda", dtype=torch.bfloat16):
        (head_nll(head, static, targets, chunk=256) * weights).sum().backward()  # warm-up
    torch.cuda.current_stream().wait_stream(side)
    static.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.autocast("cuda", dtype=torch.bfloat16):
        out = head_nll(head, static, targets, chunk=256)
        (out * weights).sum().backward()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, chunked.detach(), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(static.grad.float(), b.grad.float(), rtol=1e-3, atol=1e-5)


def test_without_autograd_a_head_that_requires_grad_is_chunked_too(monkeypatch):
    """Evaluating a base model whose parameters still require grad: under no_grad / inference mode the head
    gets no gradient, so it is scored in chunks (and compiled under compiled_head), with the plain values."""
    calls = []
    monkeypatch.setattr(nll_module, "_compiled", {"nll": lambda *a: calls.append(1) or nll_module._chunk_nll(*a),
                                                  "grad": nll_module._chunk_nll_and_grad})
    head = _head(frozen=False)
    hidden, targets = torch.randn(9, 12), torch.randint(0, 50, (9,))
    want = F.cross_entropy(head(hidden), targets, reduction="none")
    with compiled_head(), torch.inference_mode():
        got = head_nll(head, hidden, targets, chunk=4)
    assert len(calls) == 3  # 3 chunks of at most 4 rows
    torch.testing.assert_close(got, want.detach())
    with compiled_head(), torch.no_grad():
        torch.testing.assert_close(head_nll(head, hidden, targets, chunk=4), want.detach())
    assert len(calls) == 6
    with compiled_head():  # autograd on: the trainable head takes the plain path (and gets its gradient)
        head_nll(head, hidden, targets, chunk=4).sum().backward()
    assert len(calls) == 6 and head.weight.grad is not None
