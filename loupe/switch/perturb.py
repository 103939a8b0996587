"""A perturbed copy of a model: the stand-in for "a newer model of the same family" where no
trained weights can be downloaded. Every floating-point tensor w becomes
w + scale * std(w) * N(0, 1) (seeded), saved as an open_clip state dict that `--weights` loads.
Small scales give spaces related by roughly a rotation; large ones drift towards unrelated."""

from __future__ import annotations

from pathlib import Path


def perturbed_copy(name: str, out: str | Path, scale: float, seed: int = 0) -> Path:
    """Save `name`'s weights with relative Gaussian noise `scale` to `out`; returns `out`."""
    import torch

    from loupe.models.openclip import load_encoder

    enc = load_encoder(name, device="cpu")
    state = enc.model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    noisy = {}
    for key, w in state.items():
        if w.is_floating_point() and w.numel() > 1:
            noise = torch.randn(w.shape, generator=gen, dtype=w.dtype)
            w = w + scale * w.std() * noise
        noisy[key] = w
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(noisy, out)
    return out
