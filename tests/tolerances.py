"""Tolerances of the equivalence tests, derived from the math rather than tuned to one machine's float order.

Gradients. Two layouts of the same run (EP=2 against EP=1, ZeRO-N against ZeRO-0, accumulation against one big
micro-batch, ...) add the same fp32 terms in another order. Reordering a sum of n terms moves it by at most about
n u sum|terms| (u = 2^-24): relative to the terms, not to the sum, which can cancel to almost nothing. The terms of
one gradient tensor are of the order of its largest element, so the tests allow
    |g_A - g_B| <= GRAD_RTOL |g| + GRAD_SCALE_TOL max|g of that tensor|
with GRAD_SCALE_TOL = 1e-5 ~ 170 u: room for all-reduces, ZeRO partition sums and accumulation over micro-batches.

Parameters. Adam divides by sqrt(v): for a near-zero gradient (a rare token's embedding row) that noise would
become a full-size step (|update| <= lr). With eps in the denominator the update is Lipschitz in the gradient, and the
parameters' difference follows from the gradients' (`adam_param_atol`); the equivalence runs use ADAM_EPS.
"""

from __future__ import annotations

import math

import torch

GRAD_RTOL = 1e-5
GRAD_SCALE_TOL = 1e-5  # of a gradient tensor's largest |element| (module docstring)
ADAM_EPS = 1e-5  # the equivalence runs' optim.eps: a gradient difference a moves an update by <= ~2 a / eps
BETAS = (0.9, 0.95)  # the recipes' Adam betas (moe/config/mirrors.py)


def grad_atol(reference: torch.Tensor) -> float:
    """The absolute part of the gradient tolerance for one tensor: GRAD_SCALE_TOL x its largest |element|."""
    return GRAD_SCALE_TOL * float(reference.abs().max())


def adam_param_atol(
    lrs: list[float],
    grad_atol: float,
    eps: float = ADAM_EPS,
    betas: tuple[float, float] = BETAS,
    grad_rtol: float = GRAD_RTOL,
) -> float:
    """Bound on |theta_A - theta_B| after Adam(W) steps at learning rates `lrs` whose gradients agree within
    grad_atol + grad_rtol |g| at every step.

    Step t updates by u = m / (s + eps), m = sum_i w_i g_i and s = sqrt(sum_i c_i g_i^2) (bias-corrected weights,
    sum w = sum c = 1). With gradient differences <= D = max_i (grad_atol + grad_rtol |g_i|): |dm| <= D, |ds| <= D
    (s is a weighted L2 norm) and |m| <= rho s (Cauchy-Schwarz, rho = sqrt(sum w^2 / c)), so
    |du| <= (1 + rho) D / (s + eps), and max_i |g_i| <= s / sqrt(min c) gives
    |du| <= (1 + rho) (grad_atol / eps + grad_rtol / sqrt(min c)). Weight decay scales both runs' parameters by the
    same factor. Summed over the steps; that the runs' parameters then differ slightly moves later gradients by a
    second-order amount, inside the gradient bound."""
    b1, b2 = betas
    total = 0.0
    for t, lr in enumerate(lrs, start=1):
        w = [(1 - b1) * b1 ** (t - i) / (1 - b1**t) for i in range(1, t + 1)]
        c = [(1 - b2) * b2 ** (t - i) / (1 - b2**t) for i in range(1, t + 1)]
        rho = math.sqrt(sum(wi * wi / ci for wi, ci in zip(w, c)))
        total += lr * (1 + rho) * (grad_atol / eps + grad_rtol / math.sqrt(min(c)))
    return total


def assert_gradients_match(grads: dict, reference: dict, what: str) -> None:
    """Every tensor of `grads` within the gradient tolerance of `reference`'s."""
    assert set(grads) == set(reference), what
    for name, ref in reference.items():
        torch.testing.assert_close(
            grads[name],
            ref,
            rtol=GRAD_RTOL,
            atol=grad_atol(ref),
            msg=lambda m, name=name: f"{what}, step-1 gradient of {name}: {m}",
        )


def assert_adam_params_match(params: dict, reference: dict, reference_grads: dict, lrs: list[float], what: str) -> None:
    """Every parameter within the Adam bound of its own tensor's gradient tolerance (step-1 gradient scale)."""
    assert set(params) == set(reference) == set(reference_grads), what
    for name, ref in reference.items():
        atol = adam_param_atol(lrs, grad_atol(reference_grads[name]))
        torch.testing.assert_close(params[name], ref, rtol=0, atol=atol, msg=lambda m, name=name: f"{what} {name}: {m}")
