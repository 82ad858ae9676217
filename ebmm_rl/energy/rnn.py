"""C.1: the gated RNN energy for vectors (the paper's model for random binary patterns)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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
class GatedRNNConfig:
    """Sizes of the gated-RNN energy (paper App. C.1).

    Attributes:
        input_size: pattern size D.
        hidden_size: RNN state size (paper: 1024; 256 trains much faster on a CPU).
        dynamic_size: memory units, the output size of the writable ``memory`` layer. The paper's pseudocode
            says ``(input_size - 1) // 2 = 63``, which gives 128·63 + 63 = 8127 writable floats, but its text
            states the Hopfield budget 128·(128−1)/2 + 128 = 8256. ``dynamic_size = 64`` gives exactly
            128·64 + 64 = 8256, so it is the default: EBMM gets the same budget as the Hopfield network.
        hops: unrolled RNN steps (paper: 5).
    """

    input_size: int = 128
    hidden_size: int = 1024
    dynamic_size: int = 64
    hops: int = 5

    def __post_init__(self) -> None:
        check_int_fields(self)


class GatedRNNEnergy(EnergyNet):
    """Gated RNN energy ``E(x)``: the same input at every hop, energy read from the last state.

    ``state ← u·c + (1−u)·state`` with ``c = tanh([memory(x), static([x, state])])`` and
    ``u = σ(gate([x, state]))``; ``E = Linear(1)(state)``. Only ``memory`` (a linear map of ``x``) is written.
    The output layer has no bias: writing and reading only use gradients of ``E``, so a constant offset would
    never be trained (and would be an unused parameter under DistributedDataParallel).

    ``static`` and ``gate`` are single ``Linear(input + hidden, ·)`` layers as in the paper; the forward splits
    their weight matrices into the ``x`` and ``state`` columns so that the ``x`` half (the same at every hop)
    is computed once instead of at every hop. The result is identical to applying them to ``concat(x, state)``.

    :meth:`closed_form_grads` gives ``∇ₓE``, ``∇_θE`` and ``∇_θ‖∇ₓE‖²`` by hand-written backward and
    forward-over-backward passes through the hops, which :class:`~ebmm_rl.memory.EBMMemory` uses instead of
    nested autograd.
    """

    closed_form = True

    def __init__(self, config: GatedRNNConfig = GatedRNNConfig()) -> None:
        super().__init__()
        if not 0 < config.dynamic_size < config.hidden_size:
            raise ValueError(
                f"dynamic_size must lie in (0, hidden_size={config.hidden_size}); got {config.dynamic_size}"
            )
        self.config = config
        self.data_shape = (config.input_size,)
        d, h = config.input_size, config.hidden_size
        self.memory = MemoryLinear(d, config.dynamic_size)
        self.static = nn.Linear(d + h, h - config.dynamic_size)
        self.gate = nn.Linear(d + h, h)
        self.energy = nn.Linear(h, 1, bias=False)  # a constant offset would never get a gradient
        he_init_(self)

    def forward(self, x: Tensor, fast: FastWeights) -> Tensor:
        """Energies ``[B, M]`` of patterns ``x: [B, M, input_size]``."""
        B, M, D = x.shape
        dynamic_part = self.memory(x, fast).reshape(B * M, -1)  # [B*M, dynamic]
        x = x.reshape(B * M, D)
        w_static_x, w_static_h = self.static.weight[:, :D], self.static.weight[:, D:]
        w_gate_x, w_gate_h = self.gate.weight[:, :D], self.gate.weight[:, D:]
        static_x = F.linear(x, w_static_x, self.static.bias)  # [B*M, hidden - dynamic]
        gate_x = F.linear(x, w_gate_x, self.gate.bias)  # [B*M, hidden]
        state = None
        for _ in range(self.config.hops):
            if state is None:  # first hop: state = 0
                static_part, u_logit = static_x, gate_x
            else:
                static_part = static_x + state @ w_static_h.T
                u_logit = gate_x + state @ w_gate_h.T
            c = torch.tanh(torch.cat([dynamic_part, static_part], dim=-1))
            u = torch.sigmoid(u_logit)
            state = u * c if state is None else u * c + (1 - u) * state
        return self.energy(state).reshape(B, M)

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

        ``context`` keeps the input half of the static and gate pre-activations and the stacked weights.

        Forward (``sₖ`` the state before hop ``k``, ``s₀ = 0``): ``a = W x + b`` (the memory layer),
        ``zₖ = [a, S_x x + b_S + S_h sₖ]``, ``cₖ = tanh zₖ``, ``uₖ = σ(G_x x + b_G + G_h sₖ)``,
        ``sₖ₊₁ = sₖ + uₖ(cₖ − sₖ)``, ``E = wᵀs_K``. Backpropagation through the hops gives ``g_a = Σₖ ∂E/∂a`` (the
        ``a`` half of every ``∂E/∂zₖ``) and ``∇ₓE = Wᵀg_a + S_xᵀ Σₖ ∂E/∂z_{k,static} + G_xᵀ Σₖ ∂E/∂(gate logit)ₖ``,
        so ``∇_W E = g_a xᵀ`` and ``∇_b E = g_a``.

        For ``G = Σₘ cₘ‖∇ₓE‖²``, ``r = 2c∇ₓE`` and ``∇_W G = g_a rᵀ + s xᵀ``, ``∇_b G = s``, where ``s`` is the
        tangent of ``g_a`` when the forward and backward passes are differentiated in the direction ``δx = r``
        (as in :meth:`ebmm_rl.energy.MLPEnergy.closed_form_grads`): a tangent forward pass through the hops
        (``δa = W r``, ``δzₖ``, ``δuₖ``, ``δsₖ``), then the tangent of the backward recursion. With
        ``gₖ = ∂E/∂sₖ₊₁``, ``g_c = gₖuₖ``, ``g_u = gₖ(cₖ − sₖ)`` the recursion is
        ``gₖ₋₁ = gₖ − g_c + [∂E/∂z_{k,static}, σ'g_u][S_h; G_h]``, and its tangent
        ``δgₖ₋₁ = δgₖ − δg_c + [δ(∂E/∂z_{k,static}), δ(σ'g_u)][S_h; G_h]`` with ``δ(tanh'·g_c) = tanh'·δg_c −
        2c·g_c·δc`` and ``δ(σ'·g_u) = σ'·δg_u + g_u(1 − 2u)·δu``. ``s`` sums the ``a`` half of ``δ(∂E/∂zₖ)``.
        """
        B, M, D = x.shape
        dyn, hops = self.config.dynamic_size, self.config.hops
        n_static = self.config.hidden_size - dyn
        need_grad_x = need_grad_x or grad_norm_weights is not None
        a, W = memory_linear_apply(self.memory, x, fast)  # [B, M, dynamic], [B, dynamic, D]
        a = a.reshape(B * M, dyn)
        terms = self._slow_terms(x, context)
        w_x, w_h, x_pre = terms["w_x"], terms["w_h"], terms["x_pre"]
        states, cs, us, c_minus_s = [None], [], [], []  # states[k]: the state before hop k (None = 0)
        state = None
        for _ in range(hops):
            pre = x_pre if state is None else torch.addmm(x_pre, state, w_h.T)
            c = torch.tanh(torch.cat([a, pre[:, :n_static]], dim=-1))  # [R, hidden]
            u = torch.sigmoid(pre[:, n_static:])
            cms = c if state is None else c - state
            state = u * c if state is None else torch.addcmul(state, u, cms)  # s + u(c − s)
            cs.append(c)
            us.append(u)
            c_minus_s.append(cms)
            states.append(state)
        w_e = self.energy.weight[0]  # [hidden]
        energy = (state @ w_e).reshape(B, M) if need_grad_x else None

        # backward through the hops; gs[k] = ∂E/∂states[k + 1]
        gs, gcs, gus = [None] * hops, [None] * hops, [None] * hops
        g = w_e.expand_as(state)
        g_a = g_pre_sum = None
        for k in reversed(range(hops)):
            c, u = cs[k], us[k]
            gs[k] = g
            gc, gu = g * u, g * c_minus_s[k]
            gcs[k], gus[k] = gc, gu
            gz = tanh_backward(gc, c)  # ∂E/∂z_k
            g_pre = torch.cat([gz[:, dyn:], sigmoid_backward(gu, u)], dim=-1)  # ∂E/∂pre_k
            g_a = gz[:, :dyn] if g_a is None else g_a + gz[:, :dyn]
            if need_grad_x:
                g_pre_sum = g_pre if g_pre_sum is None else g_pre_sum + g_pre
            if k > 0:
                g = torch.addmm(g - gc, g_pre, w_h)  # ∂s'/∂s = 1 − u directly, plus through pre
        g_a = g_a.reshape(B, M, dyn)
        grad_x = torch.bmm(g_a, W) + (g_pre_sum @ w_x).reshape(B, M, D) if need_grad_x else None

        grad_theta = None
        if energy_weights is not None:
            grad_theta = memory_linear_grads(self.memory, x, g_a * energy_weights.unsqueeze(-1))
        grad_theta_grad_norm = None
        if grad_norm_weights is not None:
            r = 2 * grad_norm_weights.unsqueeze(-1) * grad_x  # [B, M, D] cotangent of ∇ₓE
            # tangent forward pass in the direction δx = r
            da = torch.bmm(r, W.transpose(1, 2)).reshape(B * M, dyn)
            dx_pre = r.reshape(B * M, D) @ w_x.T
            dstates, dcs, dus = [None], [], []
            ds = None
            for k in range(hops):
                c, u = cs[k], us[k]
                d_pre = dx_pre if ds is None else torch.addmm(dx_pre, ds, w_h.T)
                dc = tanh_backward(torch.cat([da, d_pre[:, :n_static]], dim=-1), c)
                du = sigmoid_backward(d_pre[:, n_static:], u)
                if ds is None:
                    ds = torch.addcmul(du * c, u, dc)
                else:
                    ds = torch.addcmul(torch.addcmul(ds, du, c_minus_s[k]), u, dc - ds)
                dcs.append(dc)
                dus.append(du)
                dstates.append(ds)
            # tangent backward pass (∂E/∂s_K = w_e is constant, so its tangent starts at 0)
            dg = s = None
            for k in reversed(range(hops)):
                c, u, dc, du, ds_in = cs[k], us[k], dcs[k], dus[k], dstates[k]
                g, gc, gu = gs[k], gcs[k], gus[k]
                dgc = g * du if dg is None else torch.addcmul(dg * u, g, du)
                dgu = g * (dc if ds_in is None else dc - ds_in)
                if dg is not None:
                    dgu = torch.addcmul(dgu, dg, c_minus_s[k])
                dgz = tanh_backward(dgc, c) - 2 * c * gc * dc
                dgp = sigmoid_backward(dgu, u) + gu * du * (1 - 2 * u)
                s = dgz[:, :dyn] if s is None else s + dgz[:, :dyn]
                if k > 0:
                    dg_pre = torch.cat([dgz[:, dyn:], dgp], dim=-1)
                    dg = torch.addmm(-dgc if dg is None else dg - dgc, dg_pre, w_h)
            s = s.reshape(B, M, dyn)  # ∂(rᵀ∇ₓE)/∂a
            grad_theta_grad_norm = memory_linear_grads(self.memory, x, s, tangent_x=r, tangent_grad_out=g_a)
        return EnergyGrads(energy, grad_x, grad_theta, grad_theta_grad_norm)

    def _slow_terms(self, x: Tensor, context: dict[str, Any] | None) -> dict[str, Any]:
        """What the closed form needs that depends on the slow weights and ``x`` only, kept in ``context``.

        The static and gate layers act as one: columns ``[:n_static]`` of a pre-activation are the static layer's,
        the rest the gate's. ``w_x``, ``w_h``, ``b_all``: the input and state halves of the stacked weights and the
        stacked biases, kept for the context's life; ``x_pre``: ``[B·M, n_static + hidden]`` the input half of the
        pre-activation with the biases, kept while ``x`` is the same tensor object (see
        :func:`~ebmm_rl.layers.context_terms`).
        """
        D = x.shape[-1]

        def weights() -> dict[str, Tensor]:
            w_all = torch.cat([self.static.weight, self.gate.weight])  # [n_static + hidden, D + hidden]
            return {"w_x": w_all[:, :D], "w_h": w_all[:, D:], "b_all": torch.cat([self.static.bias, self.gate.bias])}

        return context_terms(context, x, weights, lambda t: {"x_pre": F.linear(x.reshape(-1, D), t["w_x"], t["b_all"])})
