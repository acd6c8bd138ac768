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
import signal
import threading
from collections.abc import Callable
from importlib import metadata

import click

from xai_batch.config import PRECISIONS, ExplainConfig
from xai_batch.errors import ConfigError, XaiBatchError
from xai_batch.images import DEFAULT_MAX_PIXELS

__all__ = ["main", "cli", "explain", "explain_options", "explain_config"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Config field -> the option a user typed, so errors name what the user sees.
_OPTION_NAMES = {
    "source": "SOURCE",
    "data_dir": "DATA_DIR",
    "out": "--out",
    "checkpoint": "--checkpoint",
    "num_samples": "--num-samples",
    "top_labels": "--top-labels",
    "num_features": "--num-features",
    "hide_color": "--hide-color",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "actors": "--actors",
    "precision": "--precision",
    "max_pixels": "--max-pixels",
    "epochs": "--epochs",
    "lr": "--lr",
    "val_fraction": "--val-fraction",
    "pretrained": "--pretrained",
}


def _reporting_errors(func: Callable) -> Callable:
    """Run a command body, turning library errors into Click errors."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            name = _OPTION_NAMES.get(exc.param or "", exc.param)
            message = str(exc)
            raise click.UsageError(f"Invalid value for '{name}': {message}" if name else message) from exc
        except XaiBatchError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


class _HideColor(click.ParamType):
    name = "0..255|mean"

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


def explain_options(func: Callable) -> Callable:
    """The options shared by ``explain``, the job entrypoint and later ``submit``."""
    options = [
        click.argument("source", type=click.Path(exists=True, file_okay=False, readable=True)),
        click.option("--out", required=True, type=click.Path(file_okay=False, writable=True),
                     help="Output folder: manifest/*.parquet and job.json go here."),
        click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, readable=True),
                     help="ResNet18 checkpoint (ours, or a torchvision state dict). "
                          "Default: torchvision's ImageNet weights."),
        click.option("--num-samples", default=1000, show_default=True, type=click.IntRange(min=2),
                     help="Perturbed samples per image."),
        click.option("--top-labels", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Explain this many most probable classes per image."),
        click.option("--num-features", default=5, show_default=True, type=click.IntRange(min=1),
                     help="Superpixels marked in the mask column."),
        click.option("--hide-color", default="0", show_default=True, type=_HideColor(),
                     help="Grey level hidden superpixels get, or 'mean' for each superpixel's mean colour."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Job seed; each image's seed derives from it and the file's content."),
        click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
                     help="Perturbed images per model call (and per chunk sent to a replica)."),
        click.option("--actors", type=click.IntRange(min=1), default=None,
                     help="Model replicas. Default: one per GPU, else one."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                     help="fp32 is exact; bf16/fp16 autocast is faster on GPUs, approximately."),
        click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1),
                     help="Larger images (width x height, read from the header) become error rows undecoded."),
        click.option("--overwrite", is_flag=True,
                     help="Discard results already in --out instead of resuming them."),
        click.option("--address", default=None,
                     help="Ray cluster to join ('auto', host:port). Default: RAY_ADDRESS, else an embedded local Ray."),
        click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def explain_config(**options) -> ExplainConfig:
    """The config the explain options describe (``progress`` is not part of it)."""
    options.pop("progress", None)
    return ExplainConfig(**options)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(metadata.version("xai-batch"), "--version", prog_name="xai-batch")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Explain a classifier's predictions on every image of a dataset with LIME, on Ray."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command(context_settings=CONTEXT_SETTINGS)
@explain_options
@_reporting_errors
def explain(progress: bool, **options) -> None:
    """Explain every image under SOURCE into a Parquet manifest in --out.

    Folders are walked recursively; jpg, jpeg, png, bmp, gif, webp, tif and tiff
    files (any case) are explained, everything else is ignored. Running again
    into the same --out resumes: unchanged images already explained are skipped.
    """
    config = explain_config(**options)  # a bad option fails here, before torch or Ray is loaded
    from xai_batch.runtime import run_explain

    try:
        with _sigterm_as_interrupt():
            result = run_explain(config, progress=progress)
    except KeyboardInterrupt:
        click.echo(f"interrupted: finished images are kept in {config.out}; run the same command to resume", err=True)
        raise SystemExit(130) from None
    if result.images == 0:
        click.echo(f"warning: no image files under {config.source}", err=True)
    click.echo(
        f"{result.images} images: {result.ok} explained, {result.errors} errors, {result.skipped} already done; "
        f"{result.rows} rows in {result.seconds:.1f}s"
    )
    click.echo(f"manifest: {result.manifest}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--source", type=click.Path(exists=True, file_okay=False),
              help="The job's SOURCE: also check that its images, and only they, have rows.")
@_reporting_errors
def verify(out: str, source: str | None) -> None:
    """Check the manifest in OUT: schema, one row per image and label, decodable PNGs.

    Prints a summary and every problem; exits 1 if there is any.
    """
    from xai_batch.verify import verify_manifest

    report = verify_manifest(out, source)
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    click.echo(report.summary())
    if report.problems:
        raise SystemExit(1)


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
@click.option("--pretrained", type=click.Choice(["imagenet", "none"]), default="imagenet", show_default=True,
              help="Start from torchvision's ImageNet weights, or from scratch.")
@click.option("--augment/--no-augment", default=True, show_default=True, help="Random flips and shifts.")
@_reporting_errors
def train(data_dir: str, out: str, **options) -> None:
    """Fine-tune ResNet18 on DATA_DIR (one sub-folder per class) into a checkpoint."""
    from xai_batch.training import TrainConfig, train_model

    train_model(TrainConfig(data_dir=data_dir, out=out, **options), report=click.echo)


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
    from xai_batch.demo import DemoConfig, run_demo

    run_demo(DemoConfig(**options), report=click.echo)


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


def main() -> None:
    cli()
