"""Lovász-softmax: value against a slow set-based transcription, gradients, limits and errors."""

from __future__ import annotations

import pytest
import torch

from lidar_ssl_core.downstream.lovasz import LovaszSoftmaxLoss, lovasz_softmax
from lidar_ssl_core.errors import LossInputError

IGN = 255


def _slow_lovasz(probs: torch.Tensor, labels: torch.Tensor, classes: str = "present") -> float:
    """Direct transcription with Python sets: Δ(S) = |S| / |F ∪ S| along the sorted errors."""
    keep = [i for i in range(len(labels)) if int(labels[i]) != IGN]
    losses = []
    for c in range(probs.shape[1]):
        fg = {i for i in keep if int(labels[i]) == c}
        if classes == "present" and not fg:
            continue
        errors = {i: abs((1.0 if i in fg else 0.0) - float(probs[i, c])) for i in keep}
        order = sorted(keep, key=lambda i: -errors[i])
        loss, prev, chosen = 0.0, 0.0, set()
        for i in order:
            chosen.add(i)
            delta = len(chosen) / len(fg | chosen)
            loss += errors[i] * (delta - prev)
            prev = delta
        losses.append(loss)
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("classes", ["present", "all"])
def test_matches_slow_transcription(seed: int, classes: str) -> None:
    g = torch.Generator().manual_seed(seed)
    n, c = 40, 5
    probs = torch.randn(n, c, generator=g, dtype=torch.float64).mul(2).softmax(dim=1)
    labels = torch.randint(0, c - 1, (n,), generator=g)  # class c-1 absent: 'present' and 'all' differ
    labels[torch.rand(n, generator=g) < 0.2] = IGN
    got = lovasz_softmax(probs, labels, ignore_index=IGN, classes=classes)  # type: ignore[arg-type]
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_slow_lovasz(probs, labels, classes), abs=1e-6)


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (12,), generator=g)
    labels[0] = IGN
    loss = LovaszSoftmaxLoss(ignore_index=IGN)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,), eps=1e-6, atol=1e-5)


def test_perfect_prediction_gives_zero_and_wrong_gives_more() -> None:
    labels = torch.tensor([0, 1, 2, 2, 1, 0, IGN])
    onehot = torch.nn.functional.one_hot(labels.clamp(max=2), 3).double()
    assert float(lovasz_softmax(onehot, labels)) == pytest.approx(0.0, abs=1e-12)
    logits = 50.0 * onehot
    assert float(LovaszSoftmaxLoss()(logits, labels)) < 1e-6
    assert float(LovaszSoftmaxLoss()(-logits, labels)) > 0.5


def test_batched_layout_equals_flat_and_selected_classes() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 5, 7, generator=g)
    labels = torch.randint(0, 3, (2, 5, 7), generator=g)
    flat_logits = logits.movedim(1, -1).reshape(-1, 3)
    loss = LovaszSoftmaxLoss()
    assert float(loss(logits, labels)) == pytest.approx(
        float(loss(flat_logits, labels.reshape(-1))), abs=1e-6
    )
    probs = flat_logits.softmax(1)
    per = [float(lovasz_softmax(probs, labels.reshape(-1), classes=[k])) for k in range(3)]
    both = float(lovasz_softmax(probs, labels.reshape(-1), classes=[0, 2]))
    assert both == pytest.approx((per[0] + per[2]) / 2, abs=1e-6)


def test_all_ignored_is_zero_with_a_graph() -> None:
    logits = torch.randn(6, 3, requires_grad=True)
    loss = LovaszSoftmaxLoss()(logits, torch.full((6,), IGN))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_half_precision_logits_are_computed_in_float32() -> None:
    logits = torch.randn(30, 4)
    labels = torch.randint(0, 4, (30,))
    ref = LovaszSoftmaxLoss()(logits, labels)
    half = LovaszSoftmaxLoss()(logits.bfloat16(), labels)
    assert half.dtype == torch.float32 and float(half) == pytest.approx(float(ref), abs=2e-2)


def test_bad_inputs_raise_typed_errors() -> None:
    probs = torch.rand(5, 3)
    with pytest.raises(LossInputError, match="labels hold id 3"):
        lovasz_softmax(probs, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(LossInputError, match="shape"):
        lovasz_softmax(probs, torch.tensor([0, 1]))
    with pytest.raises(LossInputError, match="class ids"):
        lovasz_softmax(probs, torch.tensor([0, 1, 2, 0, 0]), classes=[5])
    with pytest.raises(LossInputError, match="'present', 'all'"):
        lovasz_softmax(probs, torch.tensor([0, 1, 2, 0, 0]), classes="some")  # type: ignore[arg-type]
