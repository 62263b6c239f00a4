"""Feature maps phi for linear attention: [B, H, T, D] -> [B, H, T, F].

Linear attention replaces exp(q.k / sqrt(d)) by phi(q).phi(k). The quality of the approximation is
decided by phi, so this module offers the learnable Hedgehog map LoLCATs uses (see SPEC.md) beside the
classic fixed maps it is compared against in the papers:

| name         | phi(x)                                              | F          | learnable |
|--------------|-----------------------------------------------------|------------|-----------|
| hedgehog     | [softmax(x W_h), softmax(-x W_h)], clamped >= 1e-12 | 2 f        | yes       |
| linear_act   | act(x W_h) (elu+1 by default)                       | f          | yes       |
| elu          | elu(x) + 1                                          | D          | no        |
| relu         | relu(x)                                             | D          | no        |
| performer    | exp(w.x' - |x'|^2 / 2) / sqrt(m), x' = x / d^(1/4)  | m          | no (fixed random) |
| taylor       | [1, x', vec(x' x'^T) / sqrt(2)], x' = x / d^(1/4)   | 1 + D + D^2| no        |
| identity     | x (teaching only: not non-negative)                 | D          | no        |

Every map is an ``nn.Module`` with ``.feature_dim`` (F) and is built by name with
:func:`make_feature_map`. Maps with per-head parameters hold one matrix per head, so a model gets
untied q and k maps by building two instances.

Numerics: maps compute in fp32 and return the input dtype. In fp16 the Hedgehog clamp floor (1e-12)
underflows to 0; outputs stay non-negative and the linear-attention normaliser's eps takes over.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_MAPS: dict[str, type["FeatureMap"]] = {}

HEDGEHOG_EPS = 1e-12  # SPEC.md: phi = clamp(..., min=1e-12)


def register_feature_map(name: str) -> Callable[[type["FeatureMap"]], type["FeatureMap"]]:
    """Class decorator adding a feature map to :data:`FEATURE_MAPS` under ``name`` (names are unique)."""

    def wrap(cls: type["FeatureMap"]) -> type["FeatureMap"]:
        if name in FEATURE_MAPS:
            raise ValueError(f"feature map name {name!r} is already registered by {FEATURE_MAPS[name].__name__}")
        cls.name = name
        FEATURE_MAPS[name] = cls
        return cls

    return wrap


def make_feature_map(name: str, num_heads: int, head_dim: int, **kwargs) -> "FeatureMap":
    """Build the feature map registered as ``name`` for ``num_heads`` heads of size ``head_dim``."""
    if name not in FEATURE_MAPS:
        raise ValueError(f"unknown feature map {name!r}; choose one of {sorted(FEATURE_MAPS)}")
    return FEATURE_MAPS[name](num_heads, head_dim, **kwargs)


class FeatureMap(nn.Module):
    """Base class: maps x [B, H, T, D] to phi(x) [B, H, T, F]; ``feature_dim`` is F."""

    name: str = "base"
    learnable: bool = False
    non_negative: bool = True

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.feature_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.phi(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)

    def phi(self, x: torch.Tensor) -> torch.Tensor:  # x [B, H, T, D] fp32 -> [B, H, T, F] fp32
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape [B, H, T, D], got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must have shape [B, H, T, D] (4 dims), got {x.dim()} dims {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"x has head dim {x.shape[-1]} but this {self.name} map was built for head_dim={self.head_dim}")
        if x.shape[1] != self.num_heads and self.learnable:
            raise ValueError(f"x has {x.shape[1]} heads but this {self.name} map was built for num_heads={self.num_heads}")

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, feature_dim={self.feature_dim}"


def _init_projection(weight: torch.Tensor, init: str) -> None:
    """weight [H, D, f]: 'identity' puts eye(D, f) in every head, 'random' is Kaiming-uniform."""
    with torch.no_grad():
        if init == "identity":
            weight.zero_()
            n = min(weight.shape[1], weight.shape[2])
            weight[:, torch.arange(n), torch.arange(n)] = 1.0
        elif init == "random":
            bound = 1.0 / math.sqrt(weight.shape[1])
            weight.uniform_(-bound, bound)
        else:
            raise ValueError(f"init must be 'identity' or 'random', got {init!r}")


def hedgehog_phi(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The Hedgehog map as a function (SPEC.md): x [B, H, T, D], weight [H, D, f] -> [B, H, T, 2f] in x's dtype,
    clamp(concat(softmax(x W), softmax(-x W)), min=1e-12). :class:`HedgehogFeatureMap` and the Triton
    kernels' unfused fallback (large f) both call it."""
    w = weight.to(x.dtype)
    f = w.shape[-1]
    zz = torch.einsum("bhtd,hdf->bhtf", x, torch.cat([w, -w], dim=-1))  # [B, H, T, 2f] = [z, -z]
    out = torch.softmax(zz.unflatten(-1, (2, f)), dim=-1).flatten(-2)  # [B, H, T, 2f]
    # in place when autograd does not need softmax's output (3 ops in all: cheap on CPU)
    inplace = not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
    return out.clamp_(min=HEDGEHOG_EPS) if inplace else out.clamp(min=HEDGEHOG_EPS)


@register_feature_map("hedgehog")
class HedgehogFeatureMap(FeatureMap):
    """Hedgehog (LoLCATs variant): z = x W_h, phi = clamp([softmax(z), softmax(-z)], min=1e-12).

    W_h is one (D, f) matrix per head, no bias, no scaling (SPEC.md). Output size F = 2 f.
    """

    learnable = True
    IMPLS = ("auto", "torch", "triton")

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int = 64, init: str = "identity"):
        super().__init__(num_heads, head_dim)
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim (f, per softmax half) must be a positive int, got {feature_dim!r}")
        self.proj_dim = feature_dim
        self.feature_dim = 2 * feature_dim
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, feature_dim))  # [H, D, f]
        _init_projection(self.weight, init)
        # "auto": the Triton map (lolcats_lab.kernels.hedgehog_map) for fp16/bf16 CUDA inputs, which writes
        # phi once in x's dtype and saves only x for the backward; PyTorch in fp32 otherwise. "triton"
        # forces the kernel (CPU tensors need TRITON_INTERPRET=1); "torch" the PyTorch map.
        self.impl = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_triton(x):
            self._check_input(x)
            from .kernels import triton_hedgehog_map

            return triton_hedgehog_map(x, self.weight)
        return super().forward(x)

    def _use_triton(self, x: torch.Tensor) -> bool:
        if self.impl not in self.IMPLS:
            raise ValueError(f"impl must be one of {self.IMPLS}, got {self.impl!r}")
        if self.impl != "auto":
            return self.impl == "triton"
        if not (isinstance(x, torch.Tensor) and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
            return False
        try:
            from .kernels.hedgehog_map import hedgehog_map_fits
        except ImportError:  # no Triton: the PyTorch map
            return False
        return hedgehog_map_fits(self.head_dim, self.proj_dim)

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return hedgehog_phi(x, self.weight)


@register_feature_map("linear_act")
class LinearActivationFeatureMap(FeatureMap):
    """Trainable per-head projection followed by a positive activation: phi = act(x W_h), F = f."""

    learnable = True
    _ACTIVATIONS = {
        "elu": lambda z: F.elu(z) + 1.0,
        "relu": F.relu,
        "softplus": F.softplus,
        "exp": torch.exp,
    }

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int = 64, activation: str = "elu", init: str = "identity"):
        super().__init__(num_heads, head_dim)
        if activation not in self._ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(self._ACTIVATIONS)}, got {activation!r}")
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        self.activation = activation
        self.feature_dim = feature_dim
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, feature_dim))  # [H, D, f]
        _init_projection(self.weight, init)

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("bhtd,hdf->bhtf", x, self.weight.to(x.dtype))  # [B, H, T, f]
        return self._ACTIVATIONS[self.activation](z)


@register_feature_map("elu")
class EluFeatureMap(FeatureMap):
    """phi(x) = elu(x) + 1 (Katharopoulos et al., 2020). F = D."""

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x) + 1.0


@register_feature_map("relu")
class ReluFeatureMap(FeatureMap):
    """phi(x) = relu(x). F = D. A row can be all zero: the normaliser's eps then keeps outputs finite."""

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


@register_feature_map("identity")
class IdentityFeatureMap(FeatureMap):
    """phi(x) = x. For teaching: q.k can be negative, so normalised linear attention can blow up."""

    non_negative = False

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _scaled(x: torch.Tensor) -> torch.Tensor:
    """x / d^(1/4), so that x'_q . x'_k = q.k / sqrt(d), the softmax score."""
    return x * x.shape[-1] ** -0.25


@register_feature_map("performer")
class PerformerFeatureMap(FeatureMap):
    """FAVOR+ positive random features (Choromanski et al., 2021).

    phi(x) = exp(w_i . x' - |x'|^2 / 2) / sqrt(m) for m random orthogonal rows w_i (fixed, seeded),
    an unbiased estimate of exp(q.k / sqrt(d)). F = m (default D). No stabiliser is subtracted so
    that outputs never depend on other tokens; the exponent is bounded by |w|^2 / 2 (~D/2 in fp32).
    """

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int | None = None, seed: int = 0):
        super().__init__(num_heads, head_dim)
        m = head_dim if feature_dim is None else feature_dim
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        self.feature_dim = m
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("omega", self._orthogonal_gaussian(m, head_dim, gen))  # [m, D]

    @staticmethod
    def _orthogonal_gaussian(m: int, d: int, gen: torch.Generator) -> torch.Tensor:
        blocks = []
        for _ in range(math.ceil(m / d)):
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
            blocks.append(q.T)
        w = torch.cat(blocks)[:m]  # [m, D] orthonormal rows (block-wise)
        norms = torch.randn(m, d, generator=gen).norm(dim=-1, keepdim=True)  # chi(d) row lengths
        return w * norms

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        xs = _scaled(x)  # [B, H, T, D]
        proj = xs @ self.omega.to(x.dtype).T  # [B, H, T, m]
        return torch.exp(proj - 0.5 * xs.pow(2).sum(-1, keepdim=True)) / math.sqrt(self.feature_dim)


@register_feature_map("taylor")
class TaylorFeatureMap(FeatureMap):
    """2nd-order Taylor map (Based): phi(q).phi(k) = 1 + s + s^2 / 2 with s = q.k / sqrt(d).

    phi(x) = [1, x', vec(x' x'^T) / sqrt(2)], F = 1 + D + D^2. The product is always > 0 (the
    quadratic 1 + s + s^2/2 has no real root) although single features can be negative.
    Large D makes F huge: Based projects to a small D (e.g. 16) first.
    """

    non_negative = False  # entries can be negative; phi(q).phi(k) cannot

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__(num_heads, head_dim)
        self.feature_dim = 1 + head_dim + head_dim * head_dim

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        xs = _scaled(x)  # [B, H, T, D]
        outer = torch.einsum("bhti,bhtj->bhtij", xs, xs).flatten(-2) / math.sqrt(2.0)  # [B, H, T, D*D]
        return torch.cat([torch.ones_like(xs[..., :1]), xs, outer], dim=-1)  # [B, H, T, 1 + D + D^2]
