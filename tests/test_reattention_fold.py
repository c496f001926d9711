"""Re-attention's folded head mixing (Θ and BatchNorm as one matmul) against the modules it replaces: outputs,
every gradient, running statistics, autocast, and the hooks that send it back to the modules."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deitlab.layers.attention import mix_heads_batchnorm


def _pair(heads: int, momentum: float | None, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(heads)
    mods = torch.nn.ModuleDict({"theta": torch.nn.Conv2d(heads, heads, 1), "norm": torch.nn.BatchNorm2d(heads)})
    mods.norm.momentum = momentum
    torch.nn.init.normal_(mods.theta.bias)
    torch.nn.init.uniform_(mods.norm.weight, 0.5, 1.5)
    torch.nn.init.normal_(mods.norm.bias)
    mods = mods.to(dtype)
    return mods, copy.deepcopy(mods)


def _maps(b: int, h: int, n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(b, h, n, n, generator=g, dtype=dtype), -1).requires_grad_()


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 4), h=st.integers(1, 6), n=st.integers(2, 9), momentum=st.sampled_from([0.1, 0.5, None]))
def test_outputs_gradients_and_running_stats_equal_conv_then_batchnorm(b, h, n, momentum) -> None:
    fold, ref = _pair(h, momentum, torch.float64)
    for step in range(3):  # running statistics accumulate over steps
        a1, a2 = _maps(b, h, n, step, torch.float64), _maps(b, h, n, step, torch.float64)
        up = torch.randn(b, h, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(99 + step))
        got = mix_heads_batchnorm(a1, fold.theta, fold.norm)
        want = ref.norm(ref.theta(a2))
        torch.testing.assert_close(got, want)
        (got * up).sum().backward()
        (want * up).sum().backward()
        torch.testing.assert_close(a1.grad, a2.grad)
        for (name, p1), p2 in zip(fold.named_parameters(), ref.parameters()):
            assert p1.grad is not None, name  # Θ's bias gets its zero gradient (DDP needs every parameter's)
            torch.testing.assert_close(p1.grad, p2.grad, atol=1e-10, rtol=1e-7, msg=name)
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(fold.norm, buf), getattr(ref.norm, buf))
    fold.eval(), ref.eval()
    a = _maps(b, h, n, 7, torch.float64)
    torch.testing.assert_close(mix_heads_batchnorm(a, fold.theta, fold.norm), ref.norm(ref.theta(a)))


def test_bf16_autocast_errs_no_more_than_the_modules_do() -> None:
    fold, ref = _pair(4, 0.1, torch.float32)
    truth_mods = copy.deepcopy(ref)
    a = _maps(8, 4, 51, 0, torch.float32).detach().to(torch.bfloat16)
    a1, a2, a3 = (a.clone().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mix_heads_batchnorm(a1, fold.theta, fold.norm)
        mods = ref.norm(ref.theta(a2))
    truth = truth_mods.norm(truth_mods.theta(a3.float()))  # float32 throughout, same bf16 input
    assert got.dtype == torch.bfloat16
    err_fold, err_mods = (got.float() - truth).abs().max(), (mods.float() - truth).abs().max()
    assert err_fold <= 1.5 * err_mods + 1e-3, (err_fold, err_mods)
    torch.testing.assert_close(fold.norm.running_var, truth_mods.norm.running_var, rtol=1e-3, atol=1e-7)
    up = torch.randn(truth.shape, generator=torch.Generator().manual_seed(3))  # (a squared loss would cancel in BN)
    for out in (got, mods, truth):
        (out.float() * up).sum().backward()
    gerr_fold = (a1.grad.float() - a3.grad.float()).abs().max()
    gerr_mods = (a2.grad.float() - a3.grad.float()).abs().max()
    assert gerr_fold <= 1.5 * gerr_mods + 1e-3, (gerr_fold, gerr_mods)
    werr_fold = (fold.theta.weight.grad - truth_mods.theta.weight.grad).abs().max()
    werr_mods = (ref.theta.weight.grad - truth_mods.theta.weight.grad).abs().max()
    assert werr_fold <= 1.5 * werr_mods + 1e-3, (werr_fold, werr_mods)


def test_a_hook_on_theta_runs_the_modules() -> None:
    from deitlab.layers.attention import ReAttention

    attn = ReAttention(32, num_heads=4)
    seen = []
    handle = attn.reatten_matrix.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    attn(torch.randn(2, 5, 32))
    assert seen == [torch.Size([2, 4, 5, 5])]
    handle.remove()
    attn(torch.randn(2, 5, 32))
    assert len(seen) == 1  # no hook: the folded path, the conv module is not called


def test_a_single_value_per_head_raises_batchnorms_error() -> None:
    fold, _ = _pair(2, 0.1, torch.float32)
    with pytest.raises(ValueError, match="more than 1 value"):
        mix_heads_batchnorm(torch.ones(1, 2, 1, 1), fold.theta, fold.norm)
