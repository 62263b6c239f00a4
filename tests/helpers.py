"""Small builders shared by the attention tests."""

import os

import torch

from lolcats_lab.feature_maps import make_feature_map


def case_id(B, H, T, D, F=None, **extra):
    parts = [f"B{B}", f"H{H}", f"T{T}"] + ([f"F{F}"] if F else []) + [f"D{D}"]
    parts += [f"{k}{v}" for k, v in extra.items()]
    return "-".join(parts)


def random_qkv(B, H, T, D, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(B, H, T, D, generator=g, dtype=torch.float64) * scale).to(dtype) for _ in range(3))


def hedgehog_features(q, k, f=6, seed=0):
    """Untied random Hedgehog maps applied to q and k, in q's dtype."""
    torch.manual_seed(seed)
    H, D = q.shape[1], q.shape[-1]
    phi_q = make_feature_map("hedgehog", H, D, feature_dim=f, init="random").to(q.dtype)
    phi_k = make_feature_map("hedgehog", H, D, feature_dim=f, init="random").to(q.dtype)
    return phi_q(q).detach(), phi_k(k).detach()


def ci_subset(cases, keep):
    """``cases`` in full, or only those at the indices ``keep`` under LOLCATS_CI=1 (the CI run's size: the
    interpreter-bound tests keep a covering subset there; LOLCATS_CI= runs every case)."""
    cases = list(cases)
    return [cases[i] for i in keep] if os.environ.get("LOLCATS_CI") else cases
