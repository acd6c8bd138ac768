"""The validated, frozen description of an explain job.

Everything a run depends on is in :class:`ExplainConfig`; it is built once at
the edge (CLI, job entrypoint, or a user's script) and never mutated. Fields
that change results are hashed into ``config_hash`` so a manifest row says
exactly which settings produced it; fields that only change speed (actors,
batch size, address) are left out, because results do not depend on them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from xai_batch.engines import PRECISIONS, check_engine
from xai_batch.errors import ConfigError, StorageError
from xai_batch.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_LIMIT
from xai_batch.maths.superpixels import Quickshift
from xai_batch.preprocessing import SEEDS, Preprocessing
from xai_batch.methods import DEFAULT_METHOD, LIME, METHODS
from xai_batch.storage import checkpoint_file, is_uri, locate, redact

__all__ = ["ExplainConfig", "AUTO", "PLACEMENTS", "config_hash", "check_methods"]

Precision = Literal["fp32", "bf16", "fp16"]
AUTO = "auto"
PLACEMENTS = ("auto", "workers", "replica")  # where the stages after decoding run: ``ExplainConfig.stages``

# The most each count may be, and why: each keeps one image's working memory near a gigabyte,
# so no option can make a worker or a replica run out of memory.
MAX_SAMPLES = 100_000
LIMITS: dict[str, tuple[int, str]] = {
    "num_samples": (MAX_SAMPLES, "an image holds num_samples x superpixels x 8 bytes of perturbations and "
                                 "num_samples x classes x 4 bytes of predictions, 0.96 GB at 100000 samples, "
                                 "200 superpixels and 1000 classes"),
    "max_samples": (MAX_SAMPLES, "the adaptive rule's most samples an image, held as --num-samples's are"),
    "batch_size": (4096, "a batch is batch_size x crop x crop x 3 x 4 bytes of model input, 2.5 GB at 4096 "
                         "of 224-pixel crops"),
    "top_labels": (20, "each label is a surrogate fit and a manifest row of its own for every image"),
    "max_pixels": (MAX_PIXELS_LIMIT, "a decode needs up to 12 bytes a pixel, 12 GB at a gigapixel"),
}
# A module's path in a network as pytorch-grad-cam's README writes it, dots for attributes and -1 for a
# stage's last block: layer4.-1, features.12, encoder.layers.-1.ln_1.
LAYER_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.(-?[0-9]+|[A-Za-z_][A-Za-z0-9_]*)){0,15}")


@dataclass(frozen=True)
class ExplainConfig:
    """One explain job: which images, which model, which methods and settings.

    ``methods`` are the explanation methods run on every image (LIME,
    KernelSHAP, Grad-CAM; :mod:`xai_batch.methods`), on the same superpixels;
    ``num_samples`` is each perturbation method's sample count.

    ``hide_color`` is an RGB grey level 0..255 painted over hidden superpixels,
    or ``None`` for lime's per-superpixel mean colour. ``actors=None`` means
    one model replica per GPU in the cluster, else one. ``address=None`` starts
    an embedded local Ray unless ``RAY_ADDRESS`` is set; ``insecure`` sends the
    cluster's token to another machine's GCS over plain gRPC, refused otherwise
    (:func:`~xai_batch.distributed.cluster.check_grpc_token_transport`); neither
    is hashed. ``max_pixels`` bounds
    an input's size, read from its header before decoding. ``flush_seconds``
    bounds how long finished rows wait to be written (what a crash can lose).
    ``overwrite`` discards results already in ``out`` instead of resuming them: the
    manifest's own part files, and nothing else (:func:`~xai_batch.manifest.discard_manifest`).
    ``faithfulness`` adds each explanation's deletion and insertion AUC, and
    the same for a random order; ``stability`` the top-k overlap with an
    explanation drawn with a second seed; ``masks`` a folder of ground-truth
    object masks for the localisation columns (:mod:`xai_batch.maths.quality`).

    ``engine`` runs the model: 'torch', 'onnxruntime' (CPU, fp32), or 'auto'
    (ONNX Runtime on CPU, PyTorch on CUDA). It is not hashed: the engines
    agree within fp32 rounding, so their rows are the same results.

    ``reuse`` names another run's output (last night's audit, say) whose rows
    of the same configuration are copied for images whose file is unchanged,
    so only new and changed images cost model time; it is not hashed, because
    a copied row is the row this run would have computed.

    ``stages`` says where the work after decoding runs: 'workers' (CPU tasks
    segment, sample and fit; the replicas only run the model), 'replica'
    (the replicas do all of it on their device, CPU tasks only read and
    decode), or 'auto' (the replica on CUDA, the workers on CPUs, where
    scikit-image's quickshift is faster than the torch port). Not hashed:
    the rows are the same (on CUDA lime's surrogate is fitted there, within
    1e-9 of the CPU's).

    ``verify_content`` reads and hashes every file on a resume, where by
    default a file whose size and modification time are those its rows
    recorded is passed over unread. Not hashed: it changes what is read, not
    what a row holds.

    ``num_samples="auto"`` draws samples in rounds, up to ``max_samples``, and
    stops an image once its top ``num_features`` superpixels and their signs
    are settled (:mod:`xai_batch.maths.convergence`); the rows used are a
    prefix of the ``max_samples`` matrix, so stopping at n gives lime's own
    answer for n samples.
    """

    source: str
    out: str
    checkpoint: str | None = None
    num_samples: int | Literal["auto"] = 1000
    max_samples: int = 2000
    top_labels: int = 1
    num_features: int = 5
    hide_color: int | None = 0
    seed: int = 0
    batch_size: int = 256
    actors: int | None = None
    precision: Precision = "fp32"
    address: str | None = None
    insecure: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    flush_seconds: float = 30.0
    overwrite: bool = False
    reuse: str | None = None
    faithfulness: bool = False
    stability: bool = False
    masks: str | None = None
    engine: str = "auto"
    stages: str = AUTO
    verify_content: bool = False
    methods: tuple[str, ...] = (DEFAULT_METHOD,)
    segmentation: Quickshift = field(default_factory=Quickshift)
    target_layer: str | None = None  # Grad-CAM's layer, a dotted path into the model; None: the family's

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))  # a list from JSON is the same choice
        check_methods(self.methods)
        if self.target_layer is not None:
            if "gradcam" not in self.methods:
                raise ConfigError("target_layer is the layer Grad-CAM explains: add gradcam to the methods",
                                  "target_layer")
            if not LAYER_PATH.fullmatch(self.target_layer):
                raise ConfigError(f"target_layer must be a dotted path into the model such as layer4.-1 or "
                                  f"features.12, got {self.target_layer!r}", "target_layer")
        if self.num_samples == AUTO and self.methods != (LIME,):
            raise ConfigError("num_samples 'auto' is LIME's stopping rule; with other methods give a number",
                              "num_samples")
        if self.num_samples != AUTO:
            if not _is_int(self.num_samples, minimum=2):
                raise ConfigError(f"num_samples must be an integer >= 2 or 'auto', got {self.num_samples!r}",
                                  "num_samples")
            _check_limit(self.num_samples, "num_samples")
        _check_int(self.max_samples, "max_samples", minimum=2)
        _check_int(self.top_labels, "top_labels", minimum=1)
        _check_int(self.num_features, "num_features", minimum=1)
        _check_int(self.batch_size, "batch_size", minimum=1)
        _check_int(self.seed, "seed", minimum=0)
        _check_int(self.max_pixels, "max_pixels", minimum=1)
        if not self.flush_seconds > 0:
            raise ConfigError(f"flush_seconds must be positive, got {self.flush_seconds}", "flush_seconds")
        if self.actors is not None:
            _check_int(self.actors, "actors", minimum=1)
        if self.hide_color is not None and not 0 <= self.hide_color <= 255:
            raise ConfigError(
                f"hide_color must be 0..255 or None (superpixel mean), got {self.hide_color}",
                "hide_color",
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
                "precision",
            )
        if self.stages not in PLACEMENTS:
            raise ConfigError(f"stages must be one of {', '.join(PLACEMENTS)}, got {self.stages!r}", "stages")
        _check_storage(self.source, self.out, self.checkpoint)
        check_engine(self.engine, self.precision)
        if self.masks is not None and not _safely(lambda: locate(self.masks).is_dir()):
            raise ConfigError(f"masks {self.masks!r} is not a folder", "masks")
        if self.reuse is not None and not _safely(lambda: locate(self.reuse).child("manifest").is_dir()):
            raise ConfigError(f"{self.reuse!r} holds no manifest to reuse", "reuse")

    @property
    def adaptive(self) -> bool:
        """Whether each image stops drawing samples once its explanation is settled."""
        return self.num_samples == AUTO

    @property
    def samples_drawn(self) -> int:
        """The rows of each image's sample matrix: what a fixed run uses, what ``auto`` may use at most."""
        return self.max_samples if self.num_samples == AUTO else self.num_samples

    def to_dict(self) -> dict:
        """Plain JSON-ready form, as recorded in ``job.json``."""
        return dataclasses.asdict(self)


def config_hash(config: ExplainConfig, model_id: str, method: str = DEFAULT_METHOD,
                preprocessing: Preprocessing = SEEDS) -> str:
    """Hash of everything that changes the content of a manifest row of ``method``.

    Two runs with the same hash and the same image bytes produce the same row,
    whatever the number of actors or the batch size. Each method has its own
    hash (LIME's is what it was before there were methods), so adding a
    method to a run leaves the rows of the others valid. The model's
    preprocessing is hashed when it is not the seeds' (the same weights with
    torchvision's transforms are another input), so every earlier hash holds.
    """
    material = {
        **({} if method == LIME else {"method": method}),
        "model_id": model_id,
        **({"preprocessing": preprocessing.to_dict()} if preprocessing != SEEDS else {}),
        "num_samples": config.num_samples,
        **({"max_samples": config.max_samples, "stopping": stopping_rule()} if config.adaptive else {}),
        "top_labels": config.top_labels,
        "num_features": config.num_features,
        "hide_color": config.hide_color,
        "seed": config.seed,
        "precision": config.precision,
        "segmentation": dataclasses.asdict(config.segmentation),
        **({"target_layer": config.target_layer} if method == "gradcam" and config.target_layer else {}),
        **({"faithfulness": True} if config.faithfulness else {}),
        **({"stability": True} if config.stability else {}),
        **({"masks": redact(config.masks)} if config.masks else {}),  # credentials change no row
    }
    blob = json.dumps(material, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stopping_rule() -> dict:
    """The constants of ``auto``'s stopping rule, hashed so a change to them is a new configuration."""
    from xai_batch.maths import convergence

    return {"alpha": convergence.ALPHA, "first_round": convergence.FIRST_ROUND, "round": convergence.ROUND}


def check_methods(methods: tuple[str, ...]) -> None:
    """Refuse no method, an unknown one, or one named twice."""
    if not methods:
        raise ConfigError(f"give at least one method: {', '.join(METHODS)}", "methods")
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {unknown[0]!r}", "methods")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"a method is named twice in {', '.join(methods)}", "methods")


def _check_storage(source: str, out: str, checkpoint: str | None) -> None:
    """SOURCE a readable folder or listing file, ``out`` not a file, the checkpoint a file: local paths or URIs
    (a URI pyarrow cannot use is refused here, by what it is, not by what pyarrow says of it)."""
    stored = checkpoint_file(checkpoint) if checkpoint is not None else None
    for value, param in ((source, "source"), (out, "out"), (stored, "checkpoint")):
        if value is not None and is_uri(value):
            try:
                locate(value)
            except StorageError as exc:
                raise ConfigError(str(exc), param) from None
    if is_uri(source):
        if not _safely(lambda: locate(source).exists()):
            raise ConfigError(f"SOURCE {source!r} is neither a folder nor a listing file", "source")
    elif not os.path.exists(source):
        raise ConfigError(f"SOURCE {source!r} is neither a folder nor a listing file", "source")
    elif not os.access(source, os.R_OK | (os.X_OK if os.path.isdir(source) else 0)):
        raise ConfigError(f"SOURCE {source!r} is not readable", "source")
    if stored is not None and not _safely(lambda: locate(stored).is_file()):
        raise ConfigError(f"checkpoint {stored!r} is not a file", "checkpoint")
    if _safely(lambda: locate(out).is_file()):
        raise ConfigError(f"--out {out!r} exists and is not a folder", "out")


def _safely(check) -> bool:
    """A storage check; an unreachable store or a bad URI counts as False."""
    try:
        return bool(check())
    except (OSError, ValueError):
        return False


def _is_int(value: object, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_int(value: object, name: str, *, minimum: int) -> None:
    """An integer >= ``minimum``, and within ``LIMITS`` when it has one."""
    if not _is_int(value, minimum=minimum):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}", name)
    _check_limit(value, name)


def _check_limit(value: int, name: str) -> None:
    if name in LIMITS and value > LIMITS[name][0]:
        most, why = LIMITS[name]
        raise ConfigError(f"{value} is more than the {most} allowed: {why}", name)
