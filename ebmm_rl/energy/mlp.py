"""A small gated-MLP energy for plain vectors (RL observations, embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebmm_rl.layers import (
    EnergyGrads,
    EnergyNet,
    FastWeights,
    MemoryLinear,
    he_init_,
    memory_linear_apply,
    memory_linear_grads,
)


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
    ) -> EnergyGrads:
        """Energies and gradients in closed form (see :meth:`EnergyNet.closed_form_grads`).

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
        dyn = self.config.dynamic_size
        a, W = memory_linear_apply(self.memory, x, fast)  # [B, M, dynamic], [B, dynamic, D]
        z = a if self.static is None else torch.cat([a, self.static(x)], dim=-1)
        h0 = torch.tanh(z)  # [B, M, hidden]
        hs, us, cs = [h0], [], []  # hop inputs, gates, candidates
        h = h0
        for _ in range(self.config.hops):
            u = torch.sigmoid(self.gate(h))
            c = torch.tanh(self.hidden(h))
            h = h + u * (c - h)
            us.append(u)
            cs.append(c)
            hs.append(h)
        t = torch.tanh(self.head(h))  # [B, M, hidden]
        w_e = self.energy.weight[0]  # [hidden]
        energy = t @ w_e  # [B, M]

        # backward: gradients of E at every hop's output (gh_out[i] is ∂E/∂hs[i + 1])
        gt_pre = w_e * (1 - t * t)  # ∂E/∂(W_o h + b_o)
        gh = gt_pre @ self.head.weight  # [B, M, hidden]
        gh_out, gcs, gus = [None] * self.config.hops, [None] * self.config.hops, [None] * self.config.hops
        for i in reversed(range(self.config.hops)):
            u, c, h_in = us[i], cs[i], hs[i]
            gh_out[i] = gh
            gc = gh * u
            gu = gh * (c - h_in)
            gcs[i], gus[i] = gc, gu
            gh = gh * (1 - u) + (gc * (1 - c * c)) @ self.hidden.weight + (gu * u * (1 - u)) @ self.gate.weight
        gh0 = gh  # ∂E/∂h₀
        gz = gh0 * (1 - h0 * h0)  # ∂E/∂z
        g_a = gz[..., :dyn]  # [B, M, dynamic]
        grad_x = torch.bmm(g_a, W)  # [B, M, D]
        if self.static is not None:
            grad_x = grad_x + gz[..., dyn:] @ self.static.weight

        grad_theta = None
        if energy_weights is not None:
            grad_theta = memory_linear_grads(self.memory, x, g_a * energy_weights.unsqueeze(-1))
        grad_theta_grad_norm = None
        if grad_norm_weights is not None:
            r = 2 * grad_norm_weights.unsqueeze(-1) * grad_x  # [B, M, D] cotangent of ∇ₓE
            # tangent forward pass in the direction δx = r
            dz = torch.bmm(r, W.transpose(1, 2))
            if self.static is not None:
                dz = torch.cat([dz, r @ self.static.weight.T], dim=-1)
            dh = (1 - h0 * h0) * dz
            dhs, dus, dcs = [dh], [], []
            for i in range(self.config.hops):
                u, c, h_in = us[i], cs[i], hs[i]
                du = u * (1 - u) * (dh @ self.gate.weight.T)
                dc = (1 - c * c) * (dh @ self.hidden.weight.T)
                dh = dh + du * (c - h_in) + u * (dc - dh)
                dus.append(du)
                dcs.append(dc)
                dhs.append(dh)
            dt = (1 - t * t) * (dh @ self.head.weight.T)
            # tangent backward pass
            dgh = (-2 * w_e * t * dt) @ self.head.weight
            for i in reversed(range(self.config.hops)):
                u, c, h_in, du, dc, dh_in = us[i], cs[i], hs[i], dus[i], dcs[i], dhs[i]
                g_out, gc, gu = gh_out[i], gcs[i], gus[i]
                dgc = dgh * u + g_out * du
                dgu = dgh * (c - h_in) + g_out * (dc - dh_in)
                dgq = dgc * (1 - c * c) - 2 * gc * c * dc
                dgp = dgu * u * (1 - u) + gu * du * (1 - 2 * u)
                dgh = dgh * (1 - u) - g_out * du + dgq @ self.hidden.weight + dgp @ self.gate.weight
            dgz = dgh * (1 - h0 * h0) - 2 * gh0 * h0 * dhs[0]
            s = dgz[..., :dyn]  # [B, M, dynamic] ∂(rᵀ∇ₓE)/∂a
            grad_theta_grad_norm = memory_linear_grads(self.memory, x, s, tangent_x=r, tangent_grad_out=g_a)
        return EnergyGrads(energy, grad_x, grad_theta, grad_theta_grad_norm)
