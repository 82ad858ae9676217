"""A small gated-MLP energy for plain vectors (RL observations, embeddings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ebmm_rl.layers import (
    EnergyGrads,
    EnergyNet,
    FastWeights,
    MemoryLinear,
    context_terms,
    he_init_,
    memory_linear_apply,
    memory_linear_grads,
    sigmoid_backward,
    tanh_backward,
)
from ebmm_rl.validation import check_int_fields


@dataclass(frozen=True)
class MLPConfig:
    """Sizes of the gated-MLP energy.

    Attributes:
        input_size: pattern size D.
        hidden_size: width of the representation.
        dynamic_size: memory units of the first layer (writable weights: ``(D + 1) · dynamic_size``).
        hops: gated refinement steps; the skip connection lets the energy refine its gradient (paper C.6).
    """

    input_size: int = 32
    hidden_size: int = 128
    dynamic_size: int = 32
    hops: int = 2

    def __post_init__(self) -> None:
        check_int_fields(self, {"hops": 0})


class MLPEnergy(EnergyNet):
    """Gated-MLP energy: a first layer with memory units, gated refinements, a scalar head.

    ``h = tanh([memory(x), static(x)])``, then ``hops`` gated updates ``h ← u·tanh(W h) + (1−u)·h``, then
    ``E = Linear(1)(tanh(Linear(h)))``. Only ``memory`` is written.

    :meth:`closed_form_grads` gives ``∇ₓE``, ``∇_θE`` and ``∇_θ‖∇ₓE‖²`` by hand-written backward and
    forward-over-backward passes, which :class:`~ebmm_rl.memory.EBMMemory` uses instead of nested autograd.
    """

    closed_form = True

    def __init__(self, config: MLPConfig = MLPConfig()) -> None:
        super().__init__()
        if not 0 < config.dynamic_size <= config.hidden_size:
            raise ValueError(
                f"dynamic_size must lie in (0, hidden_size={config.hidden_size}]; got {config.dynamic_size}"
            )
        self.config = config
        self.data_shape = (config.input_size,)
        d, h = config.input_size, config.hidden_size
        self.memory = MemoryLinear(d, config.dynamic_size)
        self.static = nn.Linear(d, h - config.dynamic_size) if h > config.dynamic_size else None
        self.hidden = nn.Linear(h, h)
        self.gate = nn.Linear(h, h)
        self.head = nn.Linear(h, h)
        self.energy = nn.Linear(h, 1, bias=False)  # a constant offset would never get a gradient
        he_init_(self)

    def forward(self, x: Tensor, fast: FastWeights) -> Tensor:
        """Energies ``[B, M]`` of patterns ``x: [B, M, input_size]``."""
        B, M, _ = x.shape
        parts = [self.memory(x, fast)]  # [B, M, dynamic]
        if self.static is not None:
            parts.append(self.static(x))
        h = torch.tanh(torch.cat(parts, dim=-1))  # [B, M, hidden]
        for _ in range(self.config.hops):
            u = torch.sigmoid(self.gate(h))
            h = u * torch.tanh(self.hidden(h)) + (1 - u) * h
        return self.energy(torch.tanh(self.head(h))).reshape(B, M)

    def closed_form_grads(
        self,
        x: Tensor,
        fast: FastWeights,
        energy_weights: Tensor | None = None,
        grad_norm_weights: Tensor | None = None,
        need_grad_x: bool = True,
        context: dict[str, Any] | None = None,
    ) -> EnergyGrads:
        """Energies and gradients in closed form (see :meth:`EnergyNet.closed_form_grads`).

        ``context`` keeps the static layer's output ``static(x)`` and the stacked gate and candidate weights.

        Forward ``z = [a, static(x)]`` with ``a = W x + b`` (the memory layer), ``h₀ = tanh z``, per hop
        ``u = σ(W_g h + b_g)``, ``c = tanh(W_h h + b_h)``, ``h ← h + u(c − h)``; ``t = tanh(W_o h + b_o)``,
        ``E = wᵀt``. The backward pass gives ``g_a = ∂E/∂a`` and ``∇ₓE = Wᵀg_a + static.weightᵀ g_static``, so
        ``∇_W E = g_a xᵀ``, ``∇_b E = g_a``.

        For ``G = Σₘ cₘ‖∇ₓE‖²`` put ``r = 2c∇ₓE`` (the cotangent of ``∇ₓE``): ``∇_θ G = ∇_θ (rᵀ∇ₓE)`` at fixed ``r``.
        ``W`` enters ``rᵀ∇ₓE = g_aᵀ(W r) + g_staticᵀ(static.weight r)`` directly (giving ``g_a rᵀ``) and through
        ``a`` (giving ``s xᵀ``, ``s`` to ``b``), with ``s = ∂(rᵀ∇ₓE)/∂a``, the ``a`` block of the Hessian of ``E``
        in ``(a, x)`` applied to the direction ``(W r, r)``. ``s`` is the tangent of ``g_a`` when the forward and
        backward passes are differentiated in the direction ``δx = r`` (forward-over-backward): one tangent
        forward pass (``δh``, ``δu``, ``δc``, ``δt``) and one tangent backward pass, using ``tanh' = 1 − tanh²``,
        ``(1 − tanh²)' = −2 tanh·tanh'``, ``σ' = σ(1 − σ)``, ``σ'' = σ'(1 − 2σ)``.
        """
        B, M, D = x.shape
        dyn, hidden, hops = self.config.dynamic_size, self.config.hidden_size, self.config.hops
        need_grad_x = need_grad_x or grad_norm_weights is not None
        a, W = memory_linear_apply(self.memory, x, fast)  # [B, M, dynamic], [B, dynamic, D]
        a = a.reshape(B * M, dyn)
        terms = self._slow_terms(x, context)
        z = a if self.static is None else torch.cat([a, terms["static"]], dim=-1)  # [R, hidden], R = B·M rows
        h0 = torch.tanh(z)
        w_uc, b_uc = terms["w_uc"], terms["b_uc"]
        hs, us, cs, c_minus_h = [h0], [], [], []  # per hop: input, gate, candidate, c − h
        h = h0
        for _ in range(hops):
            pre = torch.addmm(b_uc, h, w_uc.T)  # [R, 2·hidden]
            u, c = torch.sigmoid(pre[:, :hidden]), torch.tanh(pre[:, hidden:])
            cmh = c - h
            h = torch.addcmul(h, u, cmh)  # h + u(c − h)
            us.append(u)
            cs.append(c)
            c_minus_h.append(cmh)
            hs.append(h)
        t = torch.tanh(self.head(h))  # [R, hidden]
        w_e = self.energy.weight[0]  # [hidden]
        energy = (t @ w_e).reshape(B, M) if need_grad_x else None

        # backward: gh_out[i] = ∂E/∂hs[i + 1]; gcs/gus the gradients at the candidate and gate of hop i
        gh = tanh_backward(w_e.expand_as(t), t) @ self.head.weight  # [R, hidden]
        gh_out, gcs, gus = [None] * hops, [None] * hops, [None] * hops
        for i in reversed(range(hops)):
            u, c = us[i], cs[i]
            gh_out[i] = gh
            gc, gu = gh * u, gh * c_minus_h[i]
            gcs[i], gus[i] = gc, gu
            g_pre = torch.cat([sigmoid_backward(gu, u), tanh_backward(gc, c)], dim=-1)  # [R, 2·hidden]
            gh = torch.addmm(gh - gc, g_pre, w_uc)  # ∂h'/∂h = 1 − u directly, plus through u and c
        gh0 = gh  # ∂E/∂h₀
        gz = tanh_backward(gh0, h0)  # ∂E/∂z
        g_a = gz[:, :dyn].reshape(B, M, dyn)
        grad_x = None
        if need_grad_x:
            grad_x = torch.bmm(g_a, W)  # [B, M, D]
            if self.static is not None:
                grad_x = grad_x + (gz[:, dyn:] @ self.static.weight).reshape(B, M, D)

        grad_theta = None
        if energy_weights is not None:
            grad_theta = memory_linear_grads(self.memory, x, g_a * energy_weights.unsqueeze(-1))
        grad_theta_grad_norm = None
        if grad_norm_weights is not None:
            r = 2 * grad_norm_weights.unsqueeze(-1) * grad_x  # [B, M, D] cotangent of ∇ₓE
            # tangent forward pass in the direction δx = r
            dz = torch.bmm(r, W.transpose(1, 2)).reshape(B * M, dyn)
            if self.static is not None:
                dz = torch.cat([dz, r.reshape(B * M, D) @ self.static.weight.T], dim=-1)
            dh = tanh_backward(dz, h0)
            dhs, dus, dcs = [dh], [], []
            for i in range(hops):
                u, c = us[i], cs[i]
                d_pre = dh @ w_uc.T
                du, dc = sigmoid_backward(d_pre[:, :hidden], u), tanh_backward(d_pre[:, hidden:], c)
                dh = torch.addcmul(torch.addcmul(dh, du, c_minus_h[i]), u, dc - dh)
                dus.append(du)
                dcs.append(dc)
                dhs.append(dh)
            dt = tanh_backward(dh @ self.head.weight.T, t)
            # tangent backward pass
            dgh = (-2 * w_e * t * dt) @ self.head.weight
            for i in reversed(range(hops)):
                u, c, du, dc = us[i], cs[i], dus[i], dcs[i]
                g_out, gc, gu = gh_out[i], gcs[i], gus[i]
                dgc = torch.addcmul(dgh * u, g_out, du)
                dgu = torch.addcmul(dgh * c_minus_h[i], g_out, dc - dhs[i])
                dgq = tanh_backward(dgc, c) - 2 * c * gc * dc
                dgp = sigmoid_backward(dgu, u) + gu * du * (1 - 2 * u)
                dgh = torch.addmm(dgh - dgc, torch.cat([dgp, dgq], dim=-1), w_uc)
            dgz = tanh_backward(dgh, h0) - 2 * h0 * gh0 * dhs[0]
            s = dgz[:, :dyn].reshape(B, M, dyn)  # ∂(rᵀ∇ₓE)/∂a
            grad_theta_grad_norm = memory_linear_grads(self.memory, x, s, tangent_x=r, tangent_grad_out=g_a)
        return EnergyGrads(energy, grad_x, grad_theta, grad_theta_grad_norm)

    def _slow_terms(self, x: Tensor, context: dict[str, Any] | None) -> dict[str, Any]:
        """What the closed form needs that depends on the slow weights and ``x`` only, kept in ``context``.

        ``w_uc``, ``b_uc``: the gate's and the candidate's weights stacked for one matmul (rows ``[:hidden]`` the
        gate's), kept for the context's life; ``static``: ``static(x)`` ``[B·M, hidden − dynamic]`` (absent without
        a static part), kept while ``x`` is the same tensor object. See :func:`~ebmm_rl.layers.context_terms`.
        """
        return context_terms(
            context,
            x,
            lambda: {
                "w_uc": torch.cat([self.gate.weight, self.hidden.weight]),  # [2·hidden, hidden]
                "b_uc": torch.cat([self.gate.bias, self.hidden.bias]),
            },
            lambda _: {} if self.static is None else {"static": self.static(x.reshape(-1, x.shape[-1]))},
        )
