"""The pure maths of LIME for images: superpixels, sampling, perturbations,
the surrogate and masks. Nothing here knows about Ray, Click or files, so each
piece is tested in milliseconds against ``lime`` itself.
"""

from xai_batch.explain.masks import MASK_AGAINST, MASK_FOR, MASK_NONE, explanation_mask, top_features
from xai_batch.explain.perturbation import hidden_image, perturb
from xai_batch.explain.sampling import sample_rows
from xai_batch.explain.segmentation import quickshift_segments
from xai_batch.explain.surrogate import Surrogate, fit_surrogate

__all__ = [
    "MASK_AGAINST",
    "MASK_FOR",
    "MASK_NONE",
    "Surrogate",
    "explanation_mask",
    "fit_surrogate",
    "hidden_image",
    "perturb",
    "quickshift_segments",
    "sample_rows",
    "top_features",
]
