"""The ``xai-batch`` command line.

Each command parses its options, builds one frozen config, calls one library
function and translates its errors: a ``ConfigError`` becomes a usage error
naming the option (exit 2), any other ``XaiBatchError`` a one-line error
(exit 1). User mistakes never print a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata

import click
import pyarrow

from xai_batch.config import AUTO, PLACEMENTS, ExplainConfig, check_methods
from xai_batch.engines import ENGINES, PRECISIONS
from xai_batch.analysis.overlays import STYLES
from xai_batch.errors import ConfigError, XaiBatchError, one_line
from xai_batch.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_LIMIT
from xai_batch.labels import BUILTIN_MAPS
from xai_batch.methods import DEFAULT_METHOD, METHODS
from xai_batch.preprocessing import MAX_CROP, MAX_RESIZE, MIN_CROP, SEEDS, Preprocessing
from xai_batch.storage import TORCHSCRIPT_PREFIX, carries_credentials, checkpoint_file, is_torchvision, redact

__all__ = ["main", "cli", "explain", "explain_options", "explain_config"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _typed_as(field: str) -> str:
    """How the user typed the parameter a config field comes from ('--num-samples', 'SOURCE'): read off
    the command being run, so an error names what the user sees; the field itself if no parameter has it."""
    ctx = click.get_current_context(silent=True)
    spelled = f"--{field.replace('_', '-')}"
    for param in ctx.command.params if ctx else ():
        if param.name == field or spelled in param.opts:  # '--by' fills ``factors``, but a Design checks ``by``
            return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
    return field


def _echo(text: str = "", **options) -> None:
    """``click.echo`` with credentials in URIs redacted: nothing the commands print shows a secret."""
    click.echo(redact(text), **options)


def _reporting_errors(func: Callable) -> Callable:
    """Run a command body, turning library errors into Click errors."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            message = redact(str(exc))
            raise click.UsageError(f"Invalid value for '{_typed_as(exc.param)}': {message}" if exc.param else message) from exc
        except XaiBatchError as exc:
            raise click.ClickException(redact(str(exc))) from exc
        except pyarrow.ArrowException as exc:  # storage's own words quote a URI whole, credentials and all
            raise click.ClickException(redact(one_line(exc, keep="first"))) from None

    return wrapper


class _HideColor(click.ParamType):
    name = "0..255|mean"

    def unparse(self, value: int | None) -> str:
        return "mean" if value is None else str(value)

    def get_metavar(self, param, ctx=None) -> str:
        return self.name

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).lower() == "mean":
            return None
        try:
            grey = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a grey level 0..255 nor 'mean'", param, ctx)
        if not 0 <= grey <= 255:
            self.fail(f"{grey} is not a grey level 0..255", param, ctx)
        return grey


class _SampleCount(click.ParamType):
    """A sample count >= 2, or 'auto' (stop each image once its explanation is settled)."""

    name = "N|auto"

    def get_metavar(self, param, ctx=None) -> str:
        return self.name

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == AUTO:
            return value
        if str(value).lower() == AUTO:
            return AUTO
        try:
            count = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a sample count nor 'auto'", param, ctx)
        if count < 2:
            self.fail(f"{count} is not a sample count >= 2", param, ctx)
        return count


class _PathOrURI(click.ParamType):
    """A local path, checked like ``click.Path``, or a URI (s3://, gs://, file://...) checked later;
    with ``named``, also torchvision's weights by name (``torchvision:resnet50``), resolved later, and a
    TorchScript file the user trusts to run (``torchscript:PATH``), its path checked."""

    def __init__(self, named: bool = False, **path_checks) -> None:
        self.path = click.Path(**path_checks)
        self.named = named
        self.name = "PATH|URI|torchvision:NAME" if named else "PATH|URI"

    def get_metavar(self, param, ctx=None) -> str | None:
        return self.name if self.named else None  # torchvision: in lower case, as it is typed

    def convert(self, value, param, ctx):
        if value is None or (self.named and is_torchvision(str(value))):
            return value
        if self.named and str(value).startswith(TORCHSCRIPT_PREFIX):
            return TORCHSCRIPT_PREFIX + self.convert(str(value).removeprefix(TORCHSCRIPT_PREFIX), param, ctx)
        if "://" in str(value):
            return value
        return self.path.convert(value, param, ctx)


# Options several commands share, each declared once here: a Click option decorator can decorate any
# number of commands, and a factory takes the one phrase of help that differs between them. The two
# --address options are two things: a Ray cluster to join, and the Jobs API.
def _ray_address(when: str = "", otherwise: str = "an embedded local Ray") -> Callable:
    """--address, the Ray cluster a command joins (``when`` says if only some settings use it), and
    --insecure, which lets its token go to another machine's GCS over plain gRPC."""
    address = click.option("--address", default=None,
                           help=f"Ray cluster to join{when} ('auto', host:port). Default: RAY_ADDRESS, else "
                                f"{otherwise}.")
    insecure = click.option("--insecure", is_flag=True,
                            help="Send the cluster's token to another machine's GCS over plain gRPC (refused "
                                 "without it: run on the head, use an SSH tunnel, or RAY_USE_TLS=1).")
    return lambda func: address(insecure(func))


def _progress(what: str = "a progress bar") -> Callable:
    """--progress/--no-progress; ``what`` names the bars a command shows."""
    return click.option("--progress/--no-progress", default=True, show_default=True, help=f"Show {what}.")


def _methods_shown(how: str = "' explanations,") -> Callable:
    """--method on a command that reads a manifest: which methods' rows it shows."""
    return click.option(
        "--method", "methods", multiple=True, metavar="METHODS",
        callback=lambda ctx, param, value: _methods(value) if value else (),
        help=f"Only these methods{how} repeated or a comma list. Default: every method in OUT.")


_CHECKPOINT = click.option(
    "--checkpoint", type=_PathOrURI(named=True, exists=True, dir_okay=False, readable=True),
    help="The model: a checkpoint `train` wrote (any torchvision architecture), a bare ResNet18 state dict or an "
         "ONNX file (with FILE.onnx.json beside it), as a file or URI; torchscript:FILE for a TorchScript file "
         "you trust to run its own code; or torchvision's pretrained weights by name, torchvision:NAME[.WEIGHTS] "
         "(e.g. torchvision:resnet50.IMAGENET1K_V2). Default: torchvision:resnet18.IMAGENET1K_V1.")
_ACTORS = click.option("--actors", type=click.IntRange(min=1), default=None,
                       help="Model replicas. Default: one per GPU, else one.")
_PRECISION = click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                          help="fp32 is exact; bf16/fp16 autocast is faster on GPUs, approximately.")
_ENGINE = click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
                       help="What runs the model: auto is ONNX Runtime on CPU (fp32), PyTorch on CUDA. Both "
                            "are exact in fp32.")


def _max_pixels(become: str = "error rows") -> Callable:
    """--max-pixels, the decode bound; ``become`` says what a larger image turns into."""
    return click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True,
                        type=click.IntRange(min=1, max=MAX_PIXELS_LIMIT),
                        help=f"Larger images (width x height, read from the header) become {become} undecoded; "
                             "at most a gigapixel, 12 GB to decode.")


_JOBS_ADDRESS = click.option(
    "--address", default=None, help="Ray dashboard / Jobs API URL. Default: RAY_ADDRESS, else http://127.0.0.1:8265.")
_INSECURE = click.option(
    "--insecure", is_flag=True,
    help="Send the cluster's token to another machine over plain http:// (refused without it: use https://, "
         "an SSH tunnel or kubectl port-forward).")
_SOURCE_NOW = click.option("--source", type=_PathOrURI(exists=True),
                           help="Where the images are now, if not where job.json says they were explained from.")


def _label_map(default: str = "class names") -> Callable:
    """--label-map, whose default a report takes from the audit."""
    return click.option("--label-map", default=None,
                        help=f"What a predicted class means: 'imagenet-cats-dogs' or a CSV 'index,label'. Default: {default}.")


def _labels(default: str, path: click.ParamType | None = None) -> Callable:
    """--labels, a file checked here (``path``) or, for a job, on the cluster."""
    return click.option("--labels", type=path, help=f"CSV 'path,label' of true classes. Default: {default}.")


def _explain_option_list(on_cluster: bool, audit: bool = False) -> list[Callable]:
    """The explain options; ``on_cluster`` for ``submit``, whose paths live on the cluster.

    An ``audit`` measures quality by default and has no ``--reuse`` (it reuses its ``--previous``).
    """
    if on_cluster:
        paths = [
            click.argument("source"),
            click.option("--out", required=True, help="Output folder or URI, as the cluster sees it."),
            click.option("--checkpoint", help="A local checkpoint file (shipped with the job) or a URI."),
        ]
    else:
        paths = [
            click.argument("source", type=_PathOrURI(exists=True, readable=True)),
            click.option("--out", required=True, type=_PathOrURI(file_okay=False, writable=True),
                         help="Output folder or URI: manifest/*.parquet and job.json go here."),
            _CHECKPOINT,
        ]
    settings = [
        click.option("--method", "methods", multiple=True, default=(DEFAULT_METHOD,), show_default=True,
                     metavar="METHODS", callback=lambda ctx, param, value: _methods(value),
                     help=f"Explanation methods, repeated or a comma list: {', '.join(METHODS)}. They share "
                          "each image's superpixels; one row per image, label and method."),
        click.option("--target-layer", metavar="PATH", default=None,
                     help="The layer Grad-CAM explains, a dotted path into the model (layer3.-1, features.10); "
                          "default: the family's, as pytorch-grad-cam's README gives it (layer4.-1 for ResNets)."),
        click.option("--num-samples", default="1000", show_default=True, type=_SampleCount(),
                     help="Perturbed samples per image and method, or 'auto' (LIME only): in rounds, until the top --num-features "
                          "superpixels and their signs are statistically settled."),
        click.option("--max-samples", default=2000, show_default=True, type=click.IntRange(min=2),
                     help="The most samples 'auto' draws for one image."),
        click.option("--top-labels", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Explain this many most probable classes per image."),
        click.option("--num-features", default=5, show_default=True, type=click.IntRange(min=1),
                     help="Superpixels marked in the mask column."),
        click.option("--hide-color", default="0", show_default=True, type=_HideColor(),
                     help="Grey level hidden superpixels get, or 'mean' for each superpixel's mean colour."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Job seed; each image's seed derives from it and the file's content."),
        click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
                     help="Sample rows per chunk sent to a model replica; the model runs on at most "
                          "32 (CPU) or 256 (GPU) of them at a time."),
        _ACTORS,
        _PRECISION,
        _ENGINE,
        click.option("--stages", type=click.Choice(PLACEMENTS), default="auto", show_default=True,
                     help="Where the work after decoding runs: workers (CPU tasks segment and fit, the replicas "
                          "run the model), replica (the replicas do all of it, lime's maths on their device on "
                          "CUDA), auto (workers on CPUs, measured faster there; replica on CUDA, where the "
                          "workers measured 0.25 of the GPU's limit and the replica is projected, not yet "
                          "measured, near it). The rows are the same."),
        click.option("--verify-content", is_flag=True,
                     help="On a resume, read and hash every file; by default a file whose size and modification "
                          "time are those its rows recorded is passed over unread."),
        _max_pixels(),
        click.option("--flush-seconds", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="Write finished rows at least this often: what a crash can lose."),
        click.option("--overwrite", is_flag=True,
                     help="Discard the results already in --out (the manifest's own part files, nothing else) "
                          "instead of resuming them."),
        click.option("--faithfulness/--no-faithfulness", default=audit, show_default=True,
                     help="Measure each explanation's deletion and insertion AUC, and a random order's: "
                          "2 (S+1) model passes per label and 2 (S+1) per image, S superpixels."),
        click.option("--stability/--no-stability", default=audit, show_default=True,
                     help="Measure the top --num-features overlap (Jaccard) with an explanation drawn with a "
                          "second seed: as many model passes again as the explanation."),
    ]
    if not audit:
        settings.append(click.option(
            "--masks", metavar="DIR", default=None,
            help="Folder of ground-truth object masks named like the images (a.png or a.mask.pgm for "
                 "a.jpg): adds the localisation columns (on_object, pointing_hit and their chance levels)."))
        settings.append(click.option(
            "--reuse", metavar="OLD_OUT", default=None,
            help="Copy rows of the same configuration from another run's output for images whose file is "
                 "unchanged: only new and changed images are explained."))
    joining = [] if on_cluster else [_ray_address()]
    return paths + settings + joining + [_progress()]


def _apply(options: list[Callable], func: Callable) -> Callable:
    for option in reversed(options):
        func = option(func)
    return func


def explain_options(func: Callable) -> Callable:
    """The options of ``explain`` and of the job entrypoint ``jobs/explain.py``."""
    return _apply(_explain_option_list(on_cluster=False), func)


def submitted_explain_options(func: Callable) -> Callable:
    """The same options for ``submit explain``, minus ``--address`` (the job's cluster is the one)."""
    return _apply(_explain_option_list(on_cluster=True), func)


def submitted_audit_options(func: Callable) -> Callable:
    """The audit options for ``submit audit``, paths as the cluster sees them."""
    return _apply(_audit_option_list(on_cluster=True), func)


def _audit_option_list(on_cluster: bool) -> list[Callable]:
    """What an audit adds to the explain options (minus ``--reuse``: it reuses ``--previous``)."""
    path = (lambda **checks: None) if on_cluster else (lambda **checks: _PathOrURI(**checks))
    share = click.FloatRange(0, 1)
    *explaining, progress = _explain_option_list(on_cluster, audit=True)
    return [
        *explaining,
        click.option("--previous", metavar="OLD_OUT", type=path(exists=True, file_okay=False),
                     help="The previous audit's --out: its rows are reused for unchanged images, and "
                          "predictions and explanations are compared with it."),
        _labels("each image's first folder", path(exists=True, dir_okay=False)),
        _label_map(),
        click.option("--masks", type=path(exists=True, file_okay=False),
                     help="Folder of ground-truth object masks named like the images (a.png or a.mask.pgm "
                          "for a.jpg): the localisation columns and the background finding."),
        click.option("--low-confidence", default=0.5, show_default=True, type=share,
                     help="A predicted class's probability below this is a low-confidence finding."),
        click.option("--min-iou", default=0.5, show_default=True, type=share,
                     help="An explanation whose top-k mask overlaps the previous one less has moved."),
        click.option("--min-on-object", default=0.5, show_default=True, type=share,
                     help="An explanation with less of its positive top-k area on the object rests on "
                          "the background."),
        click.option("--fail-on", "fail_on", multiple=True, metavar="CONDITIONS",
                     callback=lambda ctx, param, value: _fail_conditions(value),
                     help="Exit 3 when met: a finding (errors, misclassified, low-confidence, changed, moved, "
                          "background) for any at all, FINDING>N for more than N, accuracy<P. Repeatable, "
                          "or a comma list."),
        progress,
    ]


def _methods(value: tuple[str, ...]) -> tuple[str, ...]:
    """``--method`` values, each a name or a comma list, as one tuple in the order given."""
    methods = tuple(name.strip() for item in value for name in item.split(",") if name.strip())
    try:
        check_methods(methods)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--method'") from None
    return methods


def _fail_conditions(value: tuple[str, ...]) -> tuple:
    from xai_batch.analysis.findings import parse_fail_on

    try:
        return parse_fail_on(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--fail-on'") from None


def _as_arguments(command: click.Command, options: dict) -> list[str]:
    """The command line that gives parsed ``options`` to ``command``'s twin (a job entrypoint that
    declares the same parameters): read off the command's own parameters, so a new option travels
    to the cluster without a second list here. Values are written back with their type's ``unparse``
    where it has one ('mean' for a grey level of None), else as text."""
    args: list[str] = []
    for param in command.params:
        if param.name not in options:  # the checkpoint ships beside the job
            continue
        value, unparse = options[param.name], getattr(param.type, "unparse", None)
        if isinstance(param, click.Argument):
            args.append(str(value))
        elif param.is_flag and param.secondary_opts:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            args += [param.opts[0]] if value else []
        elif value is not None or unparse is not None:
            for item in value if param.multiple else (value,):
                args.append(f"{param.opts[0]}={unparse(item) if unparse else item}")
    return args


def audit_options(func: Callable) -> Callable:
    """The options of ``audit`` and of the job entrypoint ``jobs/audit.py``."""
    return _apply(_audit_option_list(on_cluster=False), func)


def explain_config(**options) -> ExplainConfig:
    """The config the explain options describe (``progress`` is not part of it)."""
    options.pop("progress", None)
    return ExplainConfig(**options)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(metadata.version("xai-batch"), "--version", prog_name="xai-batch")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Explain a classifier's predictions on every image of a dataset (LIME, KernelSHAP, Grad-CAM), on Ray."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_redacting_log)


@cli.command(context_settings=CONTEXT_SETTINGS)
@explain_options
@_reporting_errors
def explain(progress: bool, **options) -> None:
    """Explain every image under SOURCE into a Parquet manifest in --out.

    SOURCE is a folder, walked recursively, or a file listing the images
    (Parquet or CSV with a path column, or one path per line, relative to the
    listing's folder). jpg, jpeg, png, bmp, gif, webp, tif and tiff files (any
    case) are explained, everything else is ignored. Running again
    into the same --out resumes: unchanged images already explained are skipped,
    and a method added since runs alone.
    """
    config = explain_config(**options)  # a bad option fails here, before torch or Ray is loaded
    from xai_batch.commands import run_explain

    try:
        with _sigterm_as_interrupt():
            result = run_explain(config, progress=progress)
    except KeyboardInterrupt:
        _echo(f"interrupted: finished images are kept in {config.out}; run the same command to resume", err=True)
        raise SystemExit(130) from None
    if result.images == 0:
        _echo(f"warning: no image files under {config.source}", err=True)
    _echo(
        f"{result.images} images: {result.ok} explained, {result.errors} errors, {result.skipped} already done"
        + (f" ({result.reused} reused from --reuse)" if result.reused else "")
        + (f" ({result.unread} unread: size and time unchanged)" if result.unread else "")
        + f"; {result.rows} rows in {result.seconds:.1f}s"
    )
    _echo(f"manifest: {result.manifest}")


AUDIT_FAILED = 3  # the exit status of an audit whose --fail-on conditions are met


@cli.command(context_settings=CONTEXT_SETTINGS)
@audit_options
@_reporting_errors
def audit(progress: bool, previous: str | None, labels: str | None, label_map: str | None, masks: str | None,
          low_confidence: float, min_iou: float, min_on_object: float, fail_on: tuple, **options) -> None:
    """Explain what is new or changed under SOURCE, then flag what a person should look at.

    Findings, written to OUT/audit.json with counts, accuracy per class and the
    confusion matrix: error rows, misclassified images (true label from the
    first folder or --labels, prediction through --label-map), low-confidence
    predictions, and, against --previous, changed predictions and moved
    explanations; with --masks, explanations that rest on the background.
    Exits 3 when a --fail-on condition is met, so a scheduler can alert.
    """
    from xai_batch.analysis.findings import Thresholds
    from xai_batch.commands.audit import AuditConfig, run_audit

    try:
        explaining = explain_config(**options, reuse=previous, masks=masks)
    except ConfigError as exc:
        if exc.param == "reuse":  # what explain calls reusing, an audit calls --previous
            exc.param = "previous"
        raise
    config = AuditConfig(
        explain=explaining, previous=previous, labels=labels, label_map=label_map, thresholds=Thresholds(low_confidence, min_iou, min_on_object), fail_on=fail_on,
    )
    try:
        with _sigterm_as_interrupt():
            result = run_audit(config, progress=progress)
    except KeyboardInterrupt:
        _echo(f"interrupted: finished images are kept in {config.explain.out}; run the same command to resume",
              err=True)
        raise SystemExit(130) from None
    report, run = result.report, result.report["run"]
    _echo(f"{report['counts']['images']} images: {run['explained']} explained now, {run['reused']} reused from "
          f"--previous, {run['already_done']} already done")
    if report["accuracy"] is not None:
        _echo(f"accuracy {report['accuracy']:.3f} on {report['counts']['labelled']} labelled images")
    _echo("findings: " + ", ".join(f"{kind} {report['counts'][kind]}" for kind in report["findings"]))
    _echo(f"audit: {result.path} (every finding: {report['findings_file']})")
    if result.failed:
        _echo(f"failed: {', '.join(result.failed)}", err=True)
        raise SystemExit(AUDIT_FAILED)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("out", type=_PathOrURI(exists=True, file_okay=False))
@click.option("--source", type=_PathOrURI(exists=True),
              help="The job's SOURCE (a folder, or a file listing the images): also check that its images, "
                   "and only they, have rows.")
@click.option("--repair", is_flag=True,
              help="Move damaged part files out of the manifest into OUT/damaged, so the next run redoes "
                   "their images.")
@_reporting_errors
def verify(out: str, source: str | None, repair: bool) -> None:
    """Check the manifest in OUT: schema, one row per image and label, decodable PNGs.

    Prints a summary and every problem; exits 1 if there is any. Reads the
    manifest a group of images at a time, so its memory does not grow with
    the manifest.
    """
    from xai_batch.commands.verify import repair_manifest, verify_manifest

    if repair:
        for moved in repair_manifest(out):
            _echo(f"set aside: {moved}")
    report = verify_manifest(out, source)
    for problem in report.problems:
        _echo(f"problem: {problem}")
    _echo(report.summary())
    if report.problems:
        raise SystemExit(1)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("out", type=_PathOrURI(exists=True, file_okay=False))
@click.option("--part-rows", default=4096, show_default=True, type=click.IntRange(min=1, max=1_000_000),
              help="Rows in each part written.")
@_progress()
@_reporting_errors
def compact(out: str, part_rows: int, progress: bool) -> None:
    """Rewrite OUT's manifest as sorted parts of its current rows, dropping superseded ones.

    Safe to stop at any moment: the manifest reads the same before, during
    and after, and a rerun finishes the work. Holds OUT's lease, so no run
    writes into OUT meanwhile.
    """
    from tqdm import tqdm

    from xai_batch.manifest.compact import compact as compact_manifest

    with tqdm(unit="row", desc="compact", disable=not progress, mininterval=0.5) as bar:
        done = compact_manifest(out, part_rows, progress=bar.update)
    _echo(f"{done.rows_after} current rows in {_parts(done.parts_after)} (were {done.rows_before} rows in "
          f"{_parts(done.parts_before)})")


def _parts(count: int) -> str:
    return f"{count} part" + ("" if count == 1 else "s")


def _comma_list(value: str) -> tuple[str, ...]:
    """``--by label,correct`` as a tuple; :class:`~xai_batch.analysis.design.Design` says what is valid."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


class _Numbers(click.ParamType):
    """A comma list of numbers as a tuple: ``--mean 0.485,0.456,0.406`` (``count`` of them), band edges
    ``0.5,0.8`` (any number; :class:`~xai_batch.analysis.design.Design` checks their order)."""

    def __init__(self, name: str, what: str, count: int | None = None) -> None:
        self.name, self.what, self.count = name, what, count

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(float(part) for part in _comma_list(str(value)))
        except ValueError:
            numbers = None
        if numbers is None or (self.count is not None and len(numbers) != self.count):
            self.fail(f"{value!r} is not {self.what}", param, ctx)
        return numbers


_CHANNELS = _Numbers("R,G,B", "three comma-separated numbers (red, green, blue)", count=3)
_BANDS = _Numbers("P,P...", "a comma list of probabilities")


_STYLE_HELP = ("boundaries: the seed's lime figure; heatmap: every superpixel by weight; hide-rest: only the "
               "selected superpixels; side-by-side: original and explanation, captioned.")


def _drawing_options(func: Callable) -> Callable:
    """The options of how an overlay is drawn, shared by render and stimuli."""
    return _apply([
        click.option("--num-features", default=5, show_default=True, type=click.IntRange(min=1),
                     help="Superpixels to mark, by decreasing |weight|."),
        click.option("--positive-only", is_flag=True, help="Mark only superpixels that speak for the label."),
        click.option("--blind", is_flag=True, help="side-by-side without the predicted class and probability."),
        _methods_shown(),
        _SOURCE_NOW,
        _ray_address(),
        _progress(),
    ], func)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("out", type=_PathOrURI(exists=True, file_okay=False))
@click.option("--style", type=click.Choice(STYLES), default="boundaries", show_default=True, help=_STYLE_HELP)
@click.option("--to", type=_PathOrURI(file_okay=False, writable=True),
              help="Folder for the PNGs and overlays.csv. Default: OUT/overlays/STYLE.")
@_drawing_options
@_reporting_errors
def render(out: str, style: str, num_features: int, positive_only: bool, blind: bool, methods: tuple[str, ...],
           to: str | None, source: str | None, address: str | None, insecure: bool, progress: bool) -> None:
    """Draw PNG overlays of the explanations in OUT, without running the model.

    One PNG per image, label and method, named after the image's path, every
    method in the same style; overlays.csv maps each (path, method, label)
    to its file, or to the reason it has none.
    """
    from xai_batch.analysis.overlays import RenderOptions
    from xai_batch.commands.render import run_render

    options = RenderOptions(style=style, num_features=num_features, positive_only=positive_only, blind=blind)
    result = run_render(out, to, options, source=source, address=address, progress=progress, methods=methods,
                        insecure=insecure)
    _echo(f"{result.rendered} overlays, {result.errors} errors in {result.to}")
    _echo(f"index: {result.index}")
    if result.errors:
        raise SystemExit(1)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("out", type=_PathOrURI(exists=True, file_okay=False))
@click.option("--to", required=True, type=_PathOrURI(file_okay=False, writable=True),
              help="Folder for the stimuli (S001.png, ...) and stimuli.csv.")
@click.option("--per-cell", required=True, type=click.IntRange(min=1), help="Images from each cell of the design.")
@click.option("--by", "factors", default="label,correct", show_default=True, metavar="FACTORS",
              callback=lambda ctx, param, value: _comma_list(value),
              help="Factors to balance: label (true class), correct (model right/wrong), confidence (bands), "
                   "method (each chosen image shown once per method).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Picks within cells and the presentation order.")
@click.option("--bands", default="0.5,0.8", show_default=True, type=_BANDS,
              help="Edges of the confidence bands of the predicted class's probability.")
@_labels("each image's first folder (class-per-folder SOURCE)", _PathOrURI(exists=True, dir_okay=False))
@_label_map()
@click.option("--style", type=click.Choice(STYLES), default="side-by-side", show_default=True, help=_STYLE_HELP)
@click.option("--allow-unbalanced", is_flag=True, help="Take what there is when a cell is short of --per-cell.")
@_drawing_options
@_reporting_errors
def stimuli(out: str, to: str, per_cell: int, factors: tuple[str, ...], seed: int, bands: tuple[float, ...],
            labels: str | None, label_map: str | None, style: str, allow_unbalanced: bool, num_features: int,
            positive_only: bool, blind: bool, methods: tuple[str, ...], source: str | None, address: str | None,
            insecure: bool, progress: bool) -> None:
    """Pick a balanced, reproducible set of explanations from OUT and render them for a study.

    Every cell of the design (true class x right/wrong x confidence band x
    method, as chosen with --by) gets --per-cell images; with 'method' each
    chosen image is shown once per method (within subjects), all in the same
    style. Presentation order is shuffled with --seed and files are named by
    stimulus id only. stimuli.csv lists id, file, cell, method, path, true
    and predicted label, probability and LIME's surrogate score. A short cell
    is an error unless --allow-unbalanced.
    """
    from xai_batch.analysis.overlays import RenderOptions
    from xai_batch.commands.stimuli import run_stimuli
    from xai_batch.analysis.design import Design

    design = Design(by=factors, per_cell=per_cell, seed=seed, bands=bands, methods=methods or (DEFAULT_METHOD,))
    options = RenderOptions(style=style, num_features=num_features, positive_only=positive_only, blind=blind)
    result = run_stimuli(out, to, design, options, labels=labels, label_map=label_map, source=source,
                         address=address, insecure=insecure, progress=progress, allow_unbalanced=allow_unbalanced,
                         every_method=not methods)
    for cell, count in result.short.items():
        _echo(f"warning: cell {cell} has {count} of {per_cell} images", err=True)
    _echo(f"{result.stimuli} stimuli, {result.errors} errors in {result.to}")
    _echo(f"index: {result.csv}")
    if result.errors:
        raise SystemExit(1)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("out", type=_PathOrURI(exists=True, file_okay=False))
@click.option("--to", type=_PathOrURI(dir_okay=False, writable=True),
              help="The HTML file to write. Default: OUT/report.html.")
@click.option("--images", type=click.Choice(["auto", "embed", "beside"]), default="auto", show_default=True,
              help="Thumbnails inside the page, or in a folder beside it (REPORT_files/); auto embeds up to "
                   "1000 images.")
@_labels("the audit's, else each image's first folder", _PathOrURI(exists=True, dir_okay=False))
@_label_map("the audit's, else class names")
@_SOURCE_NOW
@_ray_address()
@_methods_shown(", shown side by side;")
@_progress()
@_reporting_errors
def report(out: str, to: str | None, images: str, labels: str | None, label_map: str | None, source: str | None,
           address: str | None, insecure: bool, methods: tuple[str, ...], progress: bool) -> None:
    """Write OUT's run as one self-contained HTML page.

    The run's summary; accuracy per class and the confusion matrix where true
    labels exist; the findings (those of `xai-batch audit` when OUT was
    audited); and a gallery of every image's explanation that filters by true
    and predicted class, right or wrong, finding and confidence, sorts by
    score or confidence, and pages through any number of images. With
    several methods, each image shows them side by side (the most faithful
    marked) and a table shows how far the methods agree. Nothing is loaded
    from the network; filters live in the URL, so a view can be shared.
    """
    from xai_batch.commands.report import run_report

    result = run_report(out, to, images, labels=labels, label_map=label_map, source=source, address=address,
                        methods=methods, progress=progress, insecure=insecure)
    where = "embedded" if result.pictures is None else f"in {result.pictures}"
    _echo(f"{result.images} images, pictures {where}; {result.errors} could not be drawn")
    _echo(f"report: {result.path}")


@cli.group(context_settings=CONTEXT_SETTINGS)
@_JOBS_ADDRESS
@_INSECURE
@click.option("--wait", is_flag=True, help="Stream the job's logs; exit 0 if it succeeds, 1 if it fails or stops.")
@click.pass_context
def submit(ctx: click.Context, address: str | None, insecure: bool, wait: bool) -> None:
    """Submit a job to a Ray cluster (jobs/explain.py or jobs/audit.py, with this checkout shipped)."""
    ctx.obj = {"address": address, "insecure": insecure, "wait": wait}


@submit.command("explain", context_settings=CONTEXT_SETTINGS)
@submitted_explain_options
@click.pass_obj
@_reporting_errors
def submit_explain(settings: dict, **options) -> None:
    """Run `xai-batch explain` on the cluster as a Ray job.

    SOURCE and --out are as the cluster sees them: URIs (s3://, gs://, hdfs://, file://) or
    paths on storage every node reaches. On a local cluster relative paths are made absolute;
    on a remote one they are refused. A local --checkpoint file is shipped with the job.
    """
    _submit_job("explain.py", settings, options, paths=("source", "out", "reuse", "masks"))


@submit.command("audit", context_settings=CONTEXT_SETTINGS)
@submitted_audit_options
@click.pass_obj
@_reporting_errors
def submit_audit(settings: dict, **options) -> None:
    """Run `xai-batch audit` on the cluster as a Ray job (jobs/audit.py).

    Paths are as the cluster sees them, as for `submit explain`. With --wait the
    command exits with the audit's own status: 3 when a --fail-on condition is met.
    """
    files = () if options["label_map"] in BUILTIN_MAPS else ("label_map",)  # a built-in map is a name, not a file
    _submit_job("audit.py", settings, options, paths=("source", "out", "previous", "labels", "masks", *files))


def _submit_job(script: str, settings: dict, options: dict, paths: tuple[str, ...]) -> None:
    """Submit ``jobs/SCRIPT`` with the parsed options; with --wait, follow it and exit as it did."""
    from xai_batch.distributed.cluster import dashboard_address, is_local
    from xai_batch.distributed.jobs_client import JobsClient

    address = dashboard_address(settings["address"])
    for name in (*paths, "checkpoint"):
        value = options.get(name)
        if value is not None and carries_credentials(value):
            raise click.BadParameter(
                "a URI with credentials in it (user information, or a secret in its query) would be stored in the "
                "job's entrypoint, which everyone who can list the cluster's jobs reads: give the cluster its own "
                "credentials (an instance role, a service account, AWS_* variables) and leave them out of the URI", param_hint=f"'{_typed_as(name)}'")
    for name in paths:
        if options.get(name) is not None:
            options[name] = _cluster_path(options[name], _typed_as(name), is_local(address), address)
    checkpoint = options.pop("checkpoint")
    stored = checkpoint_file(checkpoint) if checkpoint is not None else None
    if stored is not None and "://" not in stored and not os.path.isfile(stored):
        raise click.BadParameter(f"{stored!r} is not a file", param_hint="'--checkpoint'")
    client = JobsClient(address, settings["insecure"])
    submission = client.submit(script, _as_arguments(click.get_current_context().command, options), checkpoint)
    _echo(f"submitted {submission.job_id} to {submission.address}")
    if not settings["wait"]:
        insecure = " --insecure" if settings["insecure"] else ""
        _echo(f"follow it with: xai-batch jobs{insecure} --address {submission.address} logs {submission.job_id}")
        return
    try:
        status = client.wait(submission.job_id, lambda lines: _echo(lines, nl=False))
    except KeyboardInterrupt:
        _echo(f"\nstopped waiting; the job runs on (xai-batch jobs stop {submission.job_id})", err=True)
        raise SystemExit(130) from None
    _echo(f"job {submission.job_id} {status.lower()}")
    if status != "SUCCEEDED":
        code = client.exit_code(submission.job_id)
        raise SystemExit(AUDIT_FAILED if code == AUDIT_FAILED and script == "audit.py" else 1)


def _cluster_path(value: str, hint: str, local: bool, address: str) -> str:
    """A path the job will open: URIs as they are, local paths absolute, relative ones only locally."""
    if "://" in value:
        return value
    if local:
        return os.path.abspath(value)
    if not os.path.isabs(value):
        raise click.BadParameter(
            f"relative path {value!r} would not exist on the cluster at {address}: give an absolute path on "
            "storage every node reaches, or a URI (s3://, gs://, hdfs://)",
            param_hint=f"'{hint}'",
        )
    return value


@cli.group(context_settings=CONTEXT_SETTINGS)
@_JOBS_ADDRESS
@_INSECURE
@click.pass_context
def jobs(ctx: click.Context, address: str | None, insecure: bool) -> None:
    """List, inspect, follow and stop Ray jobs."""
    ctx.obj = {"address": address, "insecure": insecure}


@jobs.command("list", context_settings=CONTEXT_SETTINGS)
@click.pass_obj
@_reporting_errors
def jobs_list(settings: dict) -> None:
    """Every job the cluster knows, newest first."""
    from xai_batch.distributed.jobs_client import JobsClient

    found = JobsClient(settings["address"], settings["insecure"]).list()
    for job in sorted(found, key=lambda j: j.start_time or 0, reverse=True):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((job.start_time or 0) / 1000))
        _echo(f"{job.submission_id or job.job_id}  {job.status.value:<9}  {started}  {job.entrypoint}")
    if not found:
        _echo("no jobs")


@jobs.command("status", context_settings=CONTEXT_SETTINGS)
@click.argument("job_id")
@click.pass_obj
@_reporting_errors
def jobs_status(settings: dict, job_id: str) -> None:
    """A job's state and, when it ended, why."""
    from xai_batch.distributed.jobs_client import JobsClient

    info = JobsClient(settings["address"], settings["insecure"]).info(job_id)
    _echo(f"{job_id}  {info.status.value}" + (f"  {info.message}" if info.message else ""))


@jobs.command("logs", context_settings=CONTEXT_SETTINGS)
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the job ends.")
@click.pass_obj
@_reporting_errors
def jobs_logs(settings: dict, job_id: str, follow: bool) -> None:
    """A job's output (its driver's stdout and stderr)."""
    from xai_batch.distributed.jobs_client import JobsClient

    client = JobsClient(settings["address"], settings["insecure"])
    if follow:
        client.wait(job_id, lambda lines: _echo(lines, nl=False))
    else:
        _echo(client.logs(job_id), nl=False)


@jobs.command("stop", context_settings=CONTEXT_SETTINGS)
@click.argument("job_id")
@click.pass_obj
@_reporting_errors
def jobs_stop(settings: dict, job_id: str) -> None:
    """Ask a job to stop (its driver gets SIGTERM: finished rows are kept)."""
    from xai_batch.distributed.jobs_client import JobsClient

    stopped = JobsClient(settings["address"], settings["insecure"]).stop(job_id)
    _echo(f"stop requested for {job_id}" if stopped else f"{job_id} had already ended")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, readable=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False, writable=True), help="Checkpoint to write.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Adam learning rate.")
@click.option("--val-fraction", default=0.2, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Held out per class for validation.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--arch", default="resnet18", show_default=True, metavar="NAME",
              help="Any torchvision classification model: resnet18/34/50/101/152, resnext*, wide_resnet*, regnet_*, "
                   "mobilenet_v2, mobilenet_v3_small/large, efficientnet_b0-b7/v2_*, convnext_*, densenet*, vgg*, "
                   "squeezenet*, shufflenet_v2_*, mnasnet*, googlenet, inception_v3, alexnet, vit_*, swin_*, "
                   "maxvit_t (torchvision.models.list_models() has them all). The checkpoint records it.")
@click.option("--pretrained", type=click.Choice(["imagenet", "none"]), default="imagenet", show_default=True,
              help="Start from the architecture's default torchvision ImageNet weights, or from scratch.")
@click.option("--input-size", default=SEEDS.crop, show_default=True, type=click.IntRange(MIN_CROP, MAX_CROP),
              help="The model's input: the centre crop's side, in pixels. The checkpoint records this and the "
                   "three below, and every command preprocesses with them.")
@click.option("--resize", type=click.IntRange(MIN_CROP, MAX_RESIZE), default=None,
              help="The side each image is resized to (square, as the seeds' Resize((256, 256))) before the "
                   "centre crop.  [default: 256 for 224, in that ratio for other sizes]")
@click.option("--mean", type=_CHANNELS, default=",".join(map(str, SEEDS.mean)), show_default=True,
              help="Normalisation's mean, per channel of values in 0..1.")
@click.option("--std", type=_CHANNELS, default=",".join(map(str, SEEDS.std)), show_default=True,
              help="Normalisation's standard deviation, per channel.")
@click.option("--augment/--no-augment", default=True, show_default=True, help="Random flips and shifts.")
@click.option("--label-smoothing", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Cross-entropy's label smoothing: keeps the model's probabilities off 0 and 1, "
                   "where LIME's surrogates have nothing to fit.")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="'cosine' anneals the learning rate to 0 over the epochs.")
@click.option("--recalibrate-bn/--no-recalibrate-bn", default=True, show_default=True,
              help="Re-estimate BatchNorm's statistics on the training images before each validation "
                   "(steadier validation and checkpoints on small datasets; one more forward pass an epoch).")
@click.option("--patience", default=3, show_default=True, type=click.IntRange(min=0),
              help="Stop after this many epochs without a better validation loss (0: never stop early).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="1 trains in this process; more run Ray Train's TorchTrainer with DDP, one process each.")
@click.option("--gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="GPUs each Ray Train worker asks for (0: CPU).")
@click.option("--max-failures", default=3, show_default=True, type=click.IntRange(min=0),
              help="Worker failures Ray Train recovers from, each time from the last epoch's checkpoint.")
@_ray_address(" with --workers > 1", otherwise="local")
@_reporting_errors
def train(data_dir: str, out: str, **options) -> None:
    """Fine-tune a torchvision classifier (--arch, ResNet18 by default) on DATA_DIR (one sub-folder per
    class) into a checkpoint that explain, audit, evaluate and submit build it from.

    With --workers N > 1 it trains on Ray Train (DDP over N workers, a checkpoint
    each epoch, restarts from it when a worker dies); DATA_DIR must then be on
    storage every worker's node reaches. The checkpoint format is the same.
    """
    from xai_batch.distributed.training import TrainConfig, train_model

    crop, resize = options.pop("input_size"), options.pop("resize")
    resize = resize or round(crop * SEEDS.resize / SEEDS.crop)
    values = {"crop": crop, "resize": resize, "mean": options.pop("mean"), "std": options.pop("std")}
    try:
        preprocessing = Preprocessing(**values)
    except ValueError as exc:  # each message starts with the field it is about
        field = str(exc).split()[0]
        raise ConfigError(str(exc), {"crop": "input_size"}.get(field, field)) from exc
    train_model(TrainConfig(data_dir=data_dir, out=out, preprocessing=preprocessing, **options), report=_echo)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("data_dir", type=_PathOrURI(exists=True, file_okay=False, readable=True))
@click.option("--out", default="eval.json", show_default=True, type=_PathOrURI(dir_okay=False, writable=True),
              help="The JSON file to write.")
@_CHECKPOINT
@_label_map()
@_ACTORS
@_PRECISION
@_ENGINE
@_max_pixels("errors")
@_ray_address()
@_progress("Ray Data's progress bars")
@_reporting_errors
def evaluate(progress: bool, **options) -> None:
    """How good is the model on DATA_DIR (one folder per class): accuracy, confusion, wrong images.

    A batch prediction with Ray Data and a pool of model actors, no LIME. With
    --label-map imagenet-cats-dogs, ImageNet's dog breeds (151-268) count as
    dog and its cats (281-285) as cat, as the seed measured its accuracy.
    """
    from xai_batch.commands.evaluate import EvaluateConfig, run_evaluate

    result = run_evaluate(EvaluateConfig(**options), progress=progress)
    accuracy = "no image could be classified" if result.accuracy is None else f"accuracy {result.accuracy:.4f}"
    _echo(f"{result.images} images, {result.errors} errors; {accuracy}")
    _echo(f"evaluation: {result.path}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--out", default="demo-run", show_default=True, type=click.Path(file_okay=False, writable=True),
              help="Folder for the generated data, the model and the manifest.")
@click.option("--images", default=6, show_default=True, type=click.IntRange(min=1), help="Held-out images to explain.")
@click.option("--num-samples", default=300, show_default=True, type=click.IntRange(min=2))
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@_reporting_errors
def demo(**options) -> None:
    """Generate a dataset, train ResNet18 on it, explain held-out images, score the explanations."""
    from xai_batch.commands.demo import DemoConfig, run_demo

    run_demo(DemoConfig(**options), report=_echo)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Let ``ray job stop`` or ``kill`` end a run as cleanly as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _redacting_log(record: logging.LogRecord) -> bool:
    """A log filter that redacts URIs' credentials from every message, whoever logs it."""
    record.msg, record.args = redact(record.getMessage()), None
    return True


def _redacted_traceback(kind, value, traceback) -> None:
    """``sys.excepthook`` for what no command turned into one line (a bug): the traceback, its URIs redacted."""
    import traceback as tracebacks

    sys.stderr.write(redact("".join(tracebacks.format_exception(kind, value, traceback))))


def main() -> None:
    sys.excepthook = _redacted_traceback
    cli()
