"""Auxiliary losses that ride along the RL loss of SB3's algorithms."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inject_loss"]


class _InjectLoss(torch.autograd.Function):
    """Identity on ``features``; its backward also sends ``coef`` into ``loss`` (adds ``coef · loss`` to the loss)."""

    @staticmethod
    def forward(ctx, features: Tensor, loss: Tensor, coef: float) -> Tensor:  # noqa: ANN001
        ctx.coef = coef
        ctx.loss_shape = loss.shape
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # noqa: ANN001
        return grad, torch.full(ctx.loss_shape, ctx.coef, dtype=grad.dtype, device=grad.device), None


def inject_loss(features: Tensor, loss: Tensor, coef: float) -> Tensor:
    """``features`` unchanged, but whatever loss is backpropagated through them also gets ``coef · loss``.

    SB3's PPO/A2C compute their loss inside ``train()`` with no hook for extra terms; every update backpropagates
    through the features once per minibatch, so an auxiliary loss of the memory rides along.
    """
    return _InjectLoss.apply(features, loss, coef)
