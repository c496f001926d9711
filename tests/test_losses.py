"""Distillation losses against SPEC §2's formulas and numbers computed by hand; gradient never reaches the teacher."""

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

SPEC_LOGITS = [30.0, 5.0, 2.0, 2.0]  # SPEC §2's example


def _kl_by_formula(s: torch.Tensor, t: torch.Tensor, tau: float, denom: int) -> torch.Tensor:
    """``τ²·Σ p_t·(log p_t − log p_s) / denom`` written out from DeiT eq. 2, independently of deitlab's code."""
    p_t = torch.softmax(t / tau, -1)
    return tau**2 * (p_t * (torch.log(p_t) - torch.log_softmax(s / tau, -1))).sum() / denom


def test_soft_targets_at_t10_match_spec_example() -> None:
    """The loss's gradient exposes the softened teacher distribution it pulls the student towards.

    By hand: for one row with ``batchmean``, ``L = τ²·Σ p_t·log(p_t / p_s)`` and ``∂L/∂s = τ·(p_s − p_t)``; a student
    with all-zero logits is uniform, so ``p_t = 1/K − (∂L/∂s)/τ``.
    """
    tau = 10.0
    s = torch.zeros(1, 4, requires_grad=True)
    soft_distillation(s, torch.tensor([SPEC_LOGITS]), tau=tau, reduction="batchmean").backward()
    p_t = 1 / 4 - s.grad[0] / tau
    torch.testing.assert_close(p_t, torch.tensor([0.8308, 0.0682, 0.0505, 0.0505]), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("i", "p_i", "shift"), [(1, 1.4e-11, 22.0), (2, 6.9e-13, 25.0), (3, 6.9e-13, 25.0)])
def test_soft_targets_at_t1_match_spec_example(i: int, p_i: float, shift: float) -> None:
    """At T = 1 the teacher's tail (SPEC: 1.4e-11, 6.9e-13) is below float32 gradient resolution: read it from the loss.

    By hand: raising the student's logit ``i`` by ``c`` above the teacher's multiplies ``p_s(i)`` by ``e^c`` and
    renormalises, so ``KL(p_t ‖ p_s) = log(1 + p_i·(e^c − 1)) − c·p_i`` exactly (``c`` puts ``p_i·e^c`` near 0.05).
    """
    t = torch.tensor([SPEC_LOGITS])
    s = t.clone()
    s[0, i] += shift
    expect = math.log1p(p_i * math.expm1(shift)) - shift * p_i
    assert soft_distillation(s, t, tau=1.0, reduction="batchmean").item() == pytest.approx(expect, rel=0.02)


def test_soft_distillation_hand_computed() -> None:
    """Two classes, τ = 2: ``p_t = (a, b)``, ``p_s = (b, a)``, ``b/a = e^½``, so ``KL = (b − a)·½ = ½·tanh(¼)``."""
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    kl = 0.5 * math.tanh(0.25)  # = 0.122459...
    assert soft_distillation(s, t, tau=2.0, reduction="batchmean").item() == pytest.approx(4 * kl, rel=1e-6)
    assert soft_distillation(s, t, tau=2.0, reduction="deit").item() == pytest.approx(4 * kl / 2, rel=1e-6)
    assert soft_distillation(t, t, tau=3.0).item() == pytest.approx(0.0, abs=1e-7)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 6), k=st.integers(2, 12), tau=st.floats(0.5, 8.0), seed=st.integers(0, 2**16))
def test_soft_distillation_equals_definition(b: int, k: int, tau: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, k, generator=g) * 3, torch.randn(b, k, generator=g) * 3
    deit = soft_distillation(s, t, tau=tau, reduction="deit")
    batchmean = soft_distillation(s, t, tau=tau, reduction="batchmean")
    # float32 log-probabilities of size ~1 carry ~1e-7 rounding each; tau² scales it (a KL near 0 is all rounding)
    atol = 1e-6 + 2e-7 * k * tau**2
    torch.testing.assert_close(deit, _kl_by_formula(s, t, tau, b * k), rtol=1e-4, atol=atol)
    torch.testing.assert_close(batchmean, _kl_by_formula(s, t, tau, b), rtol=1e-4, atol=atol)


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
    """CE against the teacher's argmax, by hand: ``−log p_s(y_t) = LSE(s) − s[y_t]``."""
    rows = [[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]]
    s = torch.tensor(rows)
    t = torch.tensor([[0.0, 5.0, 1.0], [4.0, 2.0, 9.0]])  # y_t = (1, 2)
    lse = [math.log(sum(math.exp(v) for v in row)) for row in rows]
    ce = [lse[0] - rows[0][1], lse[1] - rows[1][2]]
    assert hard_distillation(s, t).item() == pytest.approx(sum(ce) / 2, rel=1e-6)
    # smoothed target (1 − ε)·one_hot(y_t) + ε/K: CE = (1 − ε)·CE(y_t) + ε·(LSE − mean(s))
    eps = 0.1
    smoothed = [(1 - eps) * c + eps * (m - sum(row) / len(row)) for c, m, row in zip(ce, lse, rows)]
    assert hard_distillation(s, t, label_smoothing=eps).item() == pytest.approx(sum(smoothed) / 2, rel=1e-6)


def test_cross_entropy_with_soft_targets() -> None:
    # by hand: logits (0, log 3) give p = (1/4, 3/4); target (1/2, 1/2) gives ½·log 4 + ½·log(4/3)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    expect = 0.5 * math.log(4) + 0.5 * math.log(4 / 3)
    assert cross_entropy(logits, torch.tensor([[0.5, 0.5]])).item() == pytest.approx(expect, rel=1e-6)
    # one-hot soft targets take the same value as class indices through PyTorch's own cross-entropy
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 3, 1, 2, 2])
    one_hot = F.one_hot(labels, 4).float()
    torch.testing.assert_close(cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_no_gradient_flows_into_the_teachers_logits(kind: str) -> None:
    """The loss functions detach the teacher: fails if ``soft_distillation`` lets gradient reach ``t``.

    (``hard`` goes through an argmax, which stops gradient by itself; the case guards the contract should the
    hard term ever use the teacher's values.)
    """
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)  # as if a caller forgot no_grad around a trainable teacher
    loss = soft_distillation(s, t, tau=2.0) if kind == "soft" else hard_distillation(s, t)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_distillation_loss_never_trains_a_trainable_teacher() -> None:
    """A plain module teacher whose parameters require grad (no FrozenTeacher): no .grad, weights and BN stats stay."""
    teacher = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    ).eval()
    assert all(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = torch.nn.Linear(6, 3)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    y = torch.tensor([0, 1, 2, 1])
    for kind in ("soft", "hard"):
        loss_fn = DistillationLoss(F.cross_entropy, teacher, distillation_type=kind, alpha=0.5, tau=2.0)
        for _ in range(3):
            x = torch.randn(4, 6, requires_grad=True)
            parts = loss_fn(x, student(x), y)
            opt.zero_grad()
            parts.total.backward()
            opt.step()
            assert parts.distill.item() > 0
    assert all(p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


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
    with torch.no_grad():
        t_logits = teacher.model.fc(x)  # the teacher's logits straight from its one layer, not through the wrapper
    hard = DistillationLoss(F.cross_entropy, teacher, distillation_type="hard", alpha=0.5, tau=1.0)
    parts = hard(x, out, y)
    torch.testing.assert_close(parts.base, F.cross_entropy(out.cls_logits, y))  # class head <- labels
    torch.testing.assert_close(parts.distill, F.cross_entropy(out.dist_logits, t_logits.argmax(-1)))  # dist head
    torch.testing.assert_close(parts.total, 0.5 * parts.base + 0.5 * parts.distill)  # DeiT eq. 3
    assert teacher.model.calls[-1] is x  # the teacher saw exactly the student's (mixed) images

    soft = DistillationLoss(F.cross_entropy, teacher, distillation_type="soft", alpha=0.1, tau=3.0)
    parts = soft(x, out, y)
    expect = 0.9 * F.cross_entropy(out.cls_logits, y) + 0.1 * _kl_by_formula(out.dist_logits, t_logits, 3.0, 4 * 3)
    torch.testing.assert_close(parts.total, expect)

    single = torch.randn(4, 3, requires_grad=True)  # no distillation token: Hinton KD on the one head
    parts = soft(x, single, y)
    torch.testing.assert_close(parts.distill, _kl_by_formula(single, t_logits, 3.0, 4))  # auto: batchmean (÷B)

    none = DistillationLoss(F.cross_entropy, None, distillation_type="none", alpha=0.5, tau=1.0)
    parts = none(x, out, y)
    both = (F.cross_entropy(out.cls_logits, y) + F.cross_entropy(out.dist_logits, y)) / 2
    torch.testing.assert_close(parts.total, both)
    assert parts.distill.item() == 0.0


@pytest.mark.parametrize(
    ("reduction", "token_denom", "single_denom"),
    [("auto", 4 * 5, 4), ("deit", 4 * 5, 4 * 5), ("batchmean", 4, 4)],  # B = 4 images, K = 5 classes
)
def test_kl_reduction_by_name_and_auto(reduction: str, token_denom: int, single_denom: int) -> None:
    """auto = DeiT's ÷(B·K) for a student with a distillation token, Hinton's batchmean (÷B) for classic KD; a
    reduction given by name applies to both."""
    g = torch.Generator().manual_seed(3)
    x, t_logits = torch.randn(4, 6, generator=g), torch.randn(4, 5, generator=g) * 3
    loss = DistillationLoss(F.cross_entropy, lambda _: t_logits, distillation_type="soft", alpha=0.5, tau=2.0,
                            reduction=reduction)  # fmt: skip
    token = DistilledLogits(torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g))
    single = torch.randn(4, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(loss(x, token, y).distill, _kl_by_formula(token.dist_logits, t_logits, 2.0, token_denom))
    torch.testing.assert_close(loss(x, single, y).distill, _kl_by_formula(single, t_logits, 2.0, single_denom))


def test_teacher_that_does_not_fit_the_batch_is_one_clear_error() -> None:
    from deitlab.distill.losses import TeacherShapeError

    def conv_teacher(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(images.flatten(1), torch.zeros(10, 3 * 224 * 224))

    loss = DistillationLoss(F.cross_entropy, conv_teacher, distillation_type="hard", alpha=0.5, tau=1.0)
    with pytest.raises(TeacherShapeError, match=r"batch \(2, 3, 32, 32\) \(mat1 and mat2 shapes .*img_size"):
        loss(torch.zeros(2, 3, 32, 32), torch.zeros(2, 10), torch.tensor([0, 1]))
    wide = DistillationLoss(F.cross_entropy, lambda _: torch.zeros(2, 1000), distillation_type="soft", alpha=0.5,
                            tau=1.0)  # fmt: skip
    with pytest.raises(TeacherShapeError, match=r"logits \(2, 1000\) do not match the student's \(2, 10\)"):
        wide(torch.zeros(2, 3, 32, 32), torch.zeros(2, 10), torch.tensor([0, 1]))


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
