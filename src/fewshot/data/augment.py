"""Small, label-preserving changes of one example, for augmenting tiny support sets."""

from __future__ import annotations

import torch


def jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A slightly changed copy of one example: images (at least 8×8) are shifted by 1-2
    pixels with zero fill; other inputs get Gaussian noise of 5% of their spread."""
    if x.ndim == 3 and x.shape[-1] >= 8 and x.shape[-2] >= 8:
        dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator, device="cpu"))
        if dy == 0 and dx == 0:
            dx = 1
        out = torch.zeros_like(x)
        h, w = x.shape[-2:]
        out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out
    # Drawn on the host from the CPU generator (the same noise on every device), then moved.
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return x + 0.05 * (x.std() if x.numel() > 1 else 1.0) * noise
