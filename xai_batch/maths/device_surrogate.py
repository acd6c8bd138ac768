"""lime's surrogate fitted on a torch device, for every explained label at once.

:func:`xai_batch.maths.surrogate.fit_surrogate` runs lime's own ``LimeBase``
(scikit-learn's ``Ridge``) one label at a time on the CPU; this is the same
fit, in float64, as a handful of tensor operations on the model's device:

- each 0/1 sample row's cosine distance to row 0 (all ones) and lime's kernel
  ``sqrt(exp(-d² / 0.25²))``, the sample weights (one set for all labels);
- scikit-learn's weighted ridge with intercept (``alpha = 1``): weighted means
  of the columns and the targets taken out, rows scaled by the square root of
  their weight, ``(XᵀX + I) coef = Xᵀy`` solved by Cholesky, the intercept
  from the means; lime's ``num_features=100000`` keeps every superpixel, and
  its feature selection only reorders the columns, which changes nothing but
  rounding;
- the weighted R² score and the prediction on row 0, as lime reports them;
- ``order``: superpixels by decreasing |weight|, ties in input order (lime
  sorts ``local_exp`` with Python's stable sort).

The weights agree with lime's within 1e-9 (rounding, not method): see
``tests/maths/test_device_surrogate.py``. torch is a numeric library here;
nothing of Ray or the config.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xai_batch.maths.surrogate import KERNEL_WIDTH, Surrogate

__all__ = ["fit_surrogates_on_device"]


def fit_surrogates_on_device(rows: np.ndarray | torch.Tensor, probs: np.ndarray | torch.Tensor,
                             labels: Sequence[int], device: torch.device | str = "cpu") -> list[Surrogate]:
    """lime's surrogate for each of ``labels``: ``rows`` (N, S) 0/1 with row 0 all ones, ``probs`` (N, C)."""
    x = torch.as_tensor(rows, device=device).to(torch.float64)
    y = torch.as_tensor(probs, device=device)[:, list(labels)].to(torch.float64)  # (N, L)
    if x.ndim != 2 or y.shape[0] != x.shape[0] or not len(labels):
        raise ValueError(f"rows (N, S) and probabilities (N, C) with labels to fit, got {tuple(x.shape)}, "
                         f"{tuple(torch.as_tensor(probs).shape)} and {list(labels)}")
    weights = _kernel(_cosine_to_first(x))
    total = weights.sum()
    x_mean = weights @ x / total
    y_mean = weights @ y / total
    root = weights.sqrt()[:, None]
    xc, yc = (x - x_mean) * root, (y - y_mean) * root
    gram = xc.T @ xc + torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    coef = torch.cholesky_solve(xc.T @ yc, torch.linalg.cholesky(gram))  # (S, L)
    intercept = y_mean - x_mean @ coef
    fitted = x @ coef + intercept
    residual = (weights[:, None] * (y - fitted) ** 2).sum(dim=0)
    spread = (weights[:, None] * (y - y_mean) ** 2).sum(dim=0)
    # scikit-learn's r2_score on a constant target: 1 if fitted exactly, else 0
    score = torch.where(spread > 0, 1 - residual / spread.where(spread > 0, torch.ones_like(spread)),
                        (residual == 0).to(torch.float64))
    order = torch.sort(coef.abs(), dim=0, descending=True, stable=True).indices
    coef, intercept, score, local, order = (t.cpu().numpy() for t in (coef, intercept, score, fitted[0], order))
    return [
        Surrogate(weights=coef[:, k].copy(), order=tuple(int(s) for s in order[:, k]), intercept=float(intercept[k]),
                  score=float(score[k]), local_pred=float(local[k]))
        for k in range(len(labels))
    ]


def _cosine_to_first(x: torch.Tensor) -> torch.Tensor:
    """scikit-learn's cosine distance of each row to row 0, clipped to [0, 2]; a zero row is at distance 1."""
    norms = x.norm(dim=1)
    unit = x / torch.where(norms == 0, torch.ones_like(norms), norms)[:, None]
    return (1 - unit @ unit[0]).clamp(0, 2)


def _kernel(distances: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.exp(-(distances**2) / KERNEL_WIDTH**2))
