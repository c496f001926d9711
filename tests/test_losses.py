"""Distillation losses against SPEC §2's formulas and hand-computed numbers; the teacher stays frozen."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import deitlab
from deitlab.distill import DistillationLoss, FrozenTeacher, cross_entropy, hard_distillation, soft_distillation
from deitlab.errors import ConfigError
from deitlab.models import DistilledLogits


def test_temperature_softmax_matches_spec_example() -> None:
    z = torch.tensor([30.0, 5.0, 2.0, 2.0])
    torch.testing.assert_close(
        torch.softmax(z / 10, -1), torch.tensor([0.8308, 0.0682, 0.0505, 0.0505]), atol=1e-4, rtol=0
    )
    p1 = torch.softmax(z, -1)
    assert p1[0] > 0.999999 and math.isclose(p1[1].item(), 1.4e-11, rel_tol=0.05)
    assert math.isclose(p1[2].item(), 6.9e-13, rel_tol=0.05)


def test_soft_distillation_hand_computed() -> None:
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    # tau = 2: p_t = softmax([0, .5]), p_s = softmax([.5, 0]); KL(p_t || p_s) = (b - a) * log(b / a) with a < b
    a, b = 1 / (1 + math.exp(0.5)), 1 / (1 + math.exp(-0.5))
    kl = b * math.log(b / a) + a * math.log(a / b)
    assert soft_distillation(s, t, tau=2.0, reduction="batchmean").item() == pytest.approx(4 * kl, rel=1e-6)
    assert soft_distillation(s, t, tau=2.0, reduction="deit").item() == pytest.approx(4 * kl / 2, rel=1e-6)
    assert soft_distillation(t, t, tau=3.0).item() == pytest.approx(0.0, abs=1e-7)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 6), k=st.integers(2, 12), tau=st.floats(0.5, 8.0), seed=st.integers(0, 2**16))
def test_soft_distillation_equals_definition(b: int, k: int, tau: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, k, generator=g) * 3, torch.randn(b, k, generator=g) * 3
    p_t, log_p_s = torch.softmax(t / tau, -1), torch.log_softmax(s / tau, -1)
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum()
    deit = soft_distillation(s, t, tau=tau, reduction="deit")
    batchmean = soft_distillation(s, t, tau=tau, reduction="batchmean")
    torch.testing.assert_close(deit, kl * tau**2 / (b * k), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(batchmean, deit * k, rtol=1e-5, atol=1e-6)  # they differ by the class count


def test_tau_squared_keeps_gradient_scale() -> None:
    """Hinton §2: for large T the soft term's gradient scales as 1/T², so T² makes it T-independent."""
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10)
    norms = []
    for tau in (10.0, 20.0, 40.0):
        (g,) = torch.autograd.grad(soft_distillation(s, t, tau=tau), s)
        norms.append(g.norm().item())
    assert norms[0] == pytest.approx(norms[2], rel=0.02)  # without T² they would differ 16x


def test_hard_distillation_and_teacher_label_smoothing() -> None:
    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[0.0, 5.0, 1.0]])  # y_t = 1
    log_p = torch.log_softmax(s, -1)[0]
    assert hard_distillation(s, t).item() == pytest.approx(-log_p[1].item(), rel=1e-6)
    eps = 0.1  # smoothed target: 1 - eps + eps/K on y_t, eps/K elsewhere
    target = torch.full((3,), eps / 3)
    target[1] += 1 - eps
    expect = -(target * log_p).sum().item()
    assert hard_distillation(s, t, label_smoothing=eps).item() == pytest.approx(expect, rel=1e-6)


def test_cross_entropy_with_soft_targets() -> None:
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 3, 1, 2, 2])
    one_hot = F.one_hot(labels, 4).float()
    torch.testing.assert_close(cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))


class _Teacher(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x)
        return self.fc(x)


def test_distillation_loss_parts_and_heads() -> None:
    teacher = FrozenTeacher(_Teacher())
    x = torch.randn(4, 6)
    y = torch.tensor([0, 1, 2, 1])
    out = DistilledLogits(torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True))
    t_logits = teacher(x)
    hard = DistillationLoss(F.cross_entropy, teacher, distillation_type="hard", alpha=0.5, tau=1.0)
    parts = hard(x, out, y)
    torch.testing.assert_close(parts.base, F.cross_entropy(out.cls_logits, y))  # class head <- labels
    torch.testing.assert_close(parts.distill, F.cross_entropy(out.dist_logits, t_logits.argmax(-1)))  # dist head
    torch.testing.assert_close(parts.total, 0.5 * parts.base + 0.5 * parts.distill)  # DeiT eq. 3
    assert teacher.model.calls[-1] is x  # the teacher saw exactly the student's (mixed) images

    soft = DistillationLoss(F.cross_entropy, teacher, distillation_type="soft", alpha=0.1, tau=3.0)
    parts = soft(x, out, y)
    expect = 0.9 * F.cross_entropy(out.cls_logits, y) + 0.1 * soft_distillation(out.dist_logits, t_logits, tau=3.0)
    torch.testing.assert_close(parts.total, expect)

    single = torch.randn(4, 3, requires_grad=True)  # no distillation token: Hinton KD on the one head
    parts = soft(x, single, y)
    torch.testing.assert_close(parts.distill, soft_distillation(single, t_logits, tau=3.0))

    none = DistillationLoss(F.cross_entropy, None, distillation_type="none", alpha=0.5, tau=1.0)
    parts = none(x, out, y)
    both = (F.cross_entropy(out.cls_logits, y) + F.cross_entropy(out.dist_logits, y)) / 2
    torch.testing.assert_close(parts.total, both)
    assert parts.distill.item() == 0.0


def test_no_gradient_reaches_the_teacher_and_it_stays_in_eval() -> None:
    model = deitlab.create_model("regnety_002_s1", num_classes=3, img_size=16)
    teacher = FrozenTeacher(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    student = deitlab.create_model("deit_tiny_distilled_patch16_224", img_size=16, patch_size=8, in_chans=1,
                                   depth=1, num_classes=3)  # fmt: skip
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    loss_fn = DistillationLoss(F.cross_entropy, teacher, distillation_type="hard", alpha=0.5, tau=1.0)
    teacher.train()  # ignored
    for _ in range(3):
        x = torch.randn(4, 1, 16, 16, requires_grad=True)
        parts = loss_fn(x, student(x), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        parts.total.backward()
        opt.step()
    assert not model.training
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics did not move either
    teacher_ids = {id(p) for p in model.parameters()}
    assert not teacher_ids & {id(p) for g in opt.param_groups for p in g["params"]}
    assert not teacher_ids & {id(p) for p in student.parameters()}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(distillation_type="sotf"), "'sotf' is not one of"),
        (dict(alpha=1.5), "alpha=1.5 must be in"),
        (dict(tau=0.0), "tau=0.0 must be > 0"),
        (dict(reduction="mean"), "reduction='mean'"),
    ],
)
def test_bad_loss_settings(kw: dict, match: str) -> None:
    args = dict(distillation_type="soft", alpha=0.5, tau=1.0) | kw
    with pytest.raises(ConfigError, match=match):
        DistillationLoss(F.cross_entropy, lambda x: x, **args)
    with pytest.raises(ConfigError, match="needs a teacher"):
        DistillationLoss(F.cross_entropy, None, distillation_type="hard", alpha=0.5, tau=1.0)
