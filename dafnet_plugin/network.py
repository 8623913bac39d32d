"""The DAFNet auxiliary network (Zhang et al., 2024): pure torch, no knowledge of the host.

One network serves every edited module of one weight shape. It reads the gradient signal of a
sequence of k edits, token rows ``x = [u, δ]`` (module input, gradient of the loss at the module
output), and returns the weight update of that module together with the decay of everything
edited before.

Shapes used below: N token rows in all, D = d_in + d_out features, k edits in this call,
M edit vectors already in a layer's memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetworkConfig:
    n_layers: int = 2
    inner_dim: int = 1024        # width of the intra-editing MLPs
    ffn_dim: int = 1536
    att_dim: int = 1024          # per-head width of the inter-editing attention
    att_heads: int = 2
    gate_dim: int = 256          # per-head width of the diagonal-gate attention
    gate_heads: int = 2
    detach_gate: bool = False    # the authors' variant: the gate gets no gradient
    # "additive": each edit is written at a learned strength (1 when untrained) whatever its place
    # in the sequence, and earlier edits yield by a learned factor (~none when untrained);
    # "convex": the authors' rule, new weights and decay sum to one, so edit t of T acts at ~1/t
    fusion: str = "additive"

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")


FUSIONS = ("additive", "convex")
# An untrained additive network lets an earlier edit yield σ(-10) ≈ 5e-5 per new edit: 1000 later
# edits keep 96% of it
YIELD_BIAS = -10.0


class ExactNorm(nn.Module):
    """Normalisation by the exact mean and std of every row seen while training; frozen in eval.

    Gradient signals differ in scale by orders of magnitude between models and modules, and a
    running *exact* estimate (not a momentum one) keeps early and late training on one scale.
    """

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))  # sum of squared deviations

    def update(self, x: torch.Tensor) -> None:
        # Chan et al.'s merge of two (count, mean, m2) summaries, in float64 so that millions of
        # rows do not drift.
        x = x.detach().double()
        n_b = x.shape[0]
        if n_b == 0:  # a module no selected row reaches (the last layer at the subject's rows): nothing seen
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n_a = self.count.clone()
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        self.m2 += m2_b + delta ** 2 * (n_a * n_b / n)
        self.count += n_b

    def std(self) -> torch.Tensor:
        if self.count < 2:
            return torch.ones_like(self.m2)
        return (self.m2 / (self.count - 1)).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x)
        mean, std = self.mean.to(x.dtype), self.std().to(x.dtype)
        return (x - mean) / (std + self.eps)


def segment_softmax(scores: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Softmax of ``scores`` (N,) within each segment; ``segment`` (N,) holds each row's edit index."""
    peak = scores.new_full((n_segments,), float("-inf")).scatter_reduce(
        0, segment, scores, reduce="amax", include_self=True)
    e = (scores - peak[segment].detach()).exp()
    total = e.new_zeros(n_segments).index_add(0, segment, e)
    return e / total[segment]


class EditAttention(nn.Module):
    """Multi-head attention of the k new edit vectors over [memory; new edit vectors], causal.

    With ``values=False`` it returns the head-averaged attention probabilities only (the gate).
    """

    def __init__(self, dim: int, head_dim: int, heads: int, values: bool = True) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q = nn.Linear(dim, heads * head_dim)
        self.k = nn.Linear(dim, heads * head_dim)
        self.v = nn.Linear(dim, heads * head_dim) if values else None
        self.o = nn.Linear(heads * head_dim, dim) if values else None

    def forward(self, new: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        k_new, m = new.shape[0], memory.shape[0]
        keys = torch.cat([memory, new], 0)                                  # (M + k, D)
        q = self.q(new).view(k_new, self.heads, self.head_dim).transpose(0, 1)      # (H, k, d)
        kk = self.k(keys).view(m + k_new, self.heads, self.head_dim).transpose(0, 1)  # (H, M+k, d)
        scores = q @ kk.transpose(1, 2) / self.head_dim ** 0.5            # (H, k, M + k)
        # edit i sees the whole memory and the new edits 0..i
        future = torch.ones(k_new, m + k_new, dtype=torch.bool, device=new.device).triu(m + 1)
        probs = scores.masked_fill(future, float("-inf")).softmax(-1)
        if self.v is None:
            return probs.mean(0)                                            # (k, M + k)
        v = self.v(keys).view(m + k_new, self.heads, self.head_dim).transpose(0, 1)
        out = (probs @ v).transpose(0, 1).reshape(k_new, -1)               # (k, H * d)
        return self.o(out)                                                  # (k, D)


class DAFNetLayer(nn.Module):
    def __init__(self, dim: int, cfg: NetworkConfig, n_modes: int) -> None:
        super().__init__()
        self.token_mlp = nn.Sequential(nn.Linear(dim, cfg.inner_dim), nn.ReLU(), nn.Linear(cfg.inner_dim, dim))
        self.score_mlp = nn.Sequential(nn.Linear(dim, cfg.inner_dim), nn.ReLU(), nn.Linear(cfg.inner_dim, 1))
        self.inter = EditAttention(dim, cfg.att_dim, cfg.att_heads)
        # the diagonal gate serves the convex fusion only: a module without a use would get no gradient
        self.gate = EditAttention(dim, cfg.gate_dim, cfg.gate_heads, values=False) if cfg.fusion == "convex" else None
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.ReLU(), nn.Linear(cfg.ffn_dim, dim))
        self.norm_intra, self.norm_inter, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        # each module sharing this network gets its own scale and shift ("mode"), as in MEND
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.detach_gate = cfg.detach_gate

    def forward(self, x: torch.Tensor, edit: torch.Tensor, n_edits: int, mode: int, memory: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D), edit (N,) edit index of each row, memory (M, D) -> x (N, D), alpha (k,) (None
        without the gate), r (k, D) the edit vectors, o (k, D) what each edit read from the earlier ones."""
        # 1. intra-editing flow: each edit's tokens are pooled into one edit vector r
        h = self.token_mlp(x)
        a = segment_softmax(self.score_mlp(h).squeeze(-1), edit, n_edits)       # (N,)
        weighted = a.unsqueeze(-1) * h
        r = weighted.new_zeros(n_edits, x.shape[1]).index_add(0, edit, weighted)  # (k, D)
        x = self.norm_intra(x + weighted)
        # 2. inter-editing flow: each edit attends to past edits and to itself
        o = self.inter(r, memory)
        x = self.norm_inter(x + o[edit])
        # 3. diagonal gate (convex fusion): how much edit i trusts itself against everything before it
        alpha = None
        if self.gate is not None:
            m, new = memory.shape[0], torch.arange(n_edits, device=x.device)
            alpha = self.gate(r, memory)[new, m + new]
            if self.detach_gate:
                alpha = alpha.detach()
        # 4. FFN, then the module's mode; clamp rather than relu keeps a gradient through x at 0
        x = self.norm_ffn(x + self.ffn(x))
        x = (x * self.mode_scale[mode] + self.mode_shift[mode]).clamp(min=0) + x
        return x, alpha, r, o


class DAFNetNetwork(nn.Module):
    """The auxiliary network for one weight shape (d_in, d_out)."""

    def __init__(self, d_in: int, d_out: int, cfg: NetworkConfig, n_modes: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        dim = d_in + d_out
        self.norm = ExactNorm(dim)
        self.layers = nn.ModuleList(DAFNetLayer(dim, cfg, n_modes) for _ in range(cfg.n_layers))
        self.fusion = cfg.fusion
        if cfg.fusion == "additive":
            # zero weights: an untrained network writes every edit at strength 2σ(0) = 1 and lets
            # earlier edits yield σ(YIELD_BIAS); training moves both from there
            self.strength = nn.Linear(dim, 1)
            self.yield_ = nn.Linear(dim, 1)
            for head, bias in ((self.strength, 0.0), (self.yield_, YIELD_BIAS)):
                nn.init.zeros_(head.weight)
                nn.init.constant_(head.bias, bias)

    def empty_memory(self, device: torch.device | str | None = None) -> list[torch.Tensor]:
        return [torch.zeros(0, self.d_in + self.d_out, device=device) for _ in self.layers]

    def forward(self, x: torch.Tensor, edit: torch.Tensor, n_edits: int, mode: int, memory: list[torch.Tensor],
                precondition: torch.Tensor | None = None,
                earlier: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Returns the update ΔŴ (d_in, d_out), the decay γ of earlier updates (scalar) and each
        layer's new edit vectors (k, D) for the memory.

        x (N, D) float32 gradient signals of k edits, rows grouped by edit; edit (N,) their edit
        index; memory: one (M, D) tensor per layer; precondition: a symmetric (d_in, d_in) matrix P,
        giving P ΔŴ (applied to the N rows, cheaper than to ΔŴ while N < d_out); earlier: (Y, key_edit),
        Y (N_k, d_in) rows that edit t's rows lose where key_edit < t: x P − Σ_j (x·y_j) y_j, a
        preconditioner of its own for each edit (see DAFNetEditor._protect).
        """
        if earlier is not None and precondition is None:
            raise ValueError("earlier keys act through a preconditioner: pass precondition (the identity for none)")
        x = self.norm(x)
        alphas, vectors, reads = [], [], []
        for layer, past in zip(self.layers, memory):
            x, alpha, r, o = layer(x, edit, n_edits, mode, past)
            alphas.append(alpha)
            vectors.append(r)
            reads.append(o)
        # Per-edit quantities are averaged over layers *before* forming the products, which keeps
        # k edits at once exactly equal to k edits one by one (a mean of products would not be).
        if self.fusion == "convex":
            write = torch.stack(alphas).mean(0)                               # (k,) α_i
            keep = 1 - write
        else:
            write = 2 * torch.sigmoid(self.strength(torch.stack(vectors).mean(0))).squeeze(-1)
            keep = 1 - torch.sigmoid(self.yield_(torch.stack(reads).mean(0))).squeeze(-1)
        # w_i = write_i Π_{j>i} keep_j: later edits decay earlier ones of the same call
        later = torch.cat([keep.flip(0).cumprod(0).flip(0)[1:], keep.new_ones(1)])
        weight = write * later                                                # (k,)
        gamma = keep.prod()
        new_vectors = [r.detach() for r in vectors]
        # an edit no row reached (a module its rows do not reach) has length 0; clamped, its weight stays
        # finite, where w / 0 made the backward pass NaN although no row reads it
        lengths = torch.bincount(edit, minlength=n_edits).clamp(min=1).to(x.dtype)
        x_in, x_out = x.split([self.d_in, self.d_out], -1)
        x_out = x_out * (weight / lengths)[edit].unsqueeze(-1)
        if precondition is not None:
            projected = x_in @ precondition
            if earlier is not None:
                y, key_edit = earlier
                before = (key_edit.unsqueeze(0) < edit.unsqueeze(1)).to(x_in.dtype)     # (N, N_k)
                projected = projected - ((x_in @ y.T) * before) @ y
            x_in = projected
        return x_in.T @ x_out, gamma, new_vectors
