"""Memory and time of what reads a manifest, against the manifest's size; and a live run's driver.

Builds manifests of N rows without running the model (one row per image,
LIME's, with segment maps of ~60 superpixels drawn as a real run's are:
``VARIANTS`` distinct maps cycled, so no part holds one twice, and every
row's own weights), two runs deep (a later run redoes 5 % of the images, so
there are superseded rows to drop), and a second manifest of the same images
to audit against. Then each command runs in a fresh process, and the bench
records its wall time and its peak resident memory (the process's own
``ru_maxrss``; Ray's workers, where a command starts them, are not counted):

- ``resume``: the bookkeeping a resumed explain does before any work — what
  the output holds (``resume_state``) and the counts ``job.json`` reports;
- ``verify``, ``compact`` (last: it rewrites the manifest);
- ``audit``: the findings against ``--previous`` (the join by path), every one written to ``findings.parquet``;
- ``report``: the summary over every row, and a gallery of at most
  ``GALLERY_UP_TO`` (the thumbnails' images do not exist: each is an error card).

``--live`` adds explain runs over folders of empty files (each an error row):
the pipeline's per-image bookkeeping without the model. ``--resume`` adds
resumed explains over SOURCE listings of files a manifest already holds, done
and unchanged: how many files the run opened (none: their size and time
decide), the driver's memory and the time. ``--listings`` reads SOURCE
listings of N lines (``discover_images``, what a run does before any work)
and ``--against DIR`` reads them with another checkout's code too, side by
side, for the memory a change saves.

    .venv/bin/python bench/scale.py --rows 100000 1000000 --live 10000 100000 --resume 10000 100000 \
        --work /tmp/scale
    .venv/bin/python bench/scale.py --rows --listings 100000 1000000 --against /tmp/older-checkout
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

VARIANTS = 4096
PART_ROWS = 4096
HERE = os.path.dirname(os.path.abspath(__file__))


def _variants(count: int) -> tuple[list[bytes], list[bytes]]:
    """Segment maps (Voronoi cells of ~60 jittered seeds, as quickshift's are irregular) and masks, as PNGs."""
    from xai_batch.manifest import encode_mask, encode_segments

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:56, 0:56]
    segments, masks = [], []
    for _ in range(count):  # drawn on a 56x56 grid and scaled up 4x: a fraction of the time, the same sizes
        seeds = rng.uniform(0, 56, (60, 2))
        distance = (ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2
        labels = np.argmin(distance + rng.uniform(0, 10, distance.shape), axis=-1)
        _, labels = np.unique(labels, return_inverse=True)
        labels = np.kron(labels.reshape(56, 56), np.ones((4, 4), np.int64))
        segments.append(encode_segments(labels))
        chosen = rng.choice(labels.max() + 1, 5, replace=False)
        masks.append(encode_mask(np.where(np.isin(labels, chosen[:3]), 1, np.where(np.isin(labels, chosen[3:]), 2, 0))))
    return segments, masks


def image_path(index: int) -> str:
    return f"class{index % 4}/img{index:08d}.png"


def build(out: str, rows: int, run_ids: list[str], redone: float, salt: int, config_hash: str = "benchhash00000000",
          stamps: tuple[list[int], list[int]] | None = None) -> None:
    """A manifest of ``rows`` images: every one from the first run, ``redone`` of them again from the second.
    ``stamps`` are the files' sizes and modification times, where the files exist."""
    import pyarrow as pa

    from xai_batch.manifest import SCHEMA, decode_segments, write_part
    from xai_batch.storage import locate

    segments, masks = _variants(VARIANTS)
    sizes = [int(decode_segments(s).max()) + 1 for s in segments]
    folder = locate(out).child("manifest")
    folder.make_dirs()
    rng = np.random.default_rng(salt)
    part = 0
    for run, run_id in enumerate(run_ids):
        images = range(rows) if run == 0 else range(0, rows, round(1 / redone))
        for start in range(0, len(images), PART_ROWS):
            chunk = images[start : start + PART_ROWS]
            variant = [(index * 7 + salt + run) % VARIANTS for index in chunk]
            table = pa.table({
                "path": [image_path(index) for index in chunk],
                "sha256": [f"{index:064x}" for index in chunk],
                "status": ["ok"] * len(chunk),
                "width": pa.array([224] * len(chunk), pa.int32()), "height": pa.array([224] * len(chunk), pa.int32()),
                "model_id": ["bench-model"] * len(chunk),
                "pred_index": pa.array([index % 4 if index % 10 else (index + 1) % 4 for index in chunk], pa.int32()),
                "pred_name": [f"class{index % 4 if index % 10 else (index + 1) % 4}" for index in chunk],
                "pred_prob": pa.array(rng.uniform(0.3, 1, len(chunk)), pa.float32()),
                "topk_index": [[index % 4 if index % 10 else (index + 1) % 4, 4, 5, 6, 7] for index in chunk],
                "topk_prob": pa.array([[0.9, 0.04, 0.03, 0.02, 0.01]] * len(chunk), pa.list_(pa.float32())),
                "explained_index": pa.array([index % 4 if index % 10 else (index + 1) % 4 for index in chunk], pa.int32()),
                "explained_name": [f"class{index % 4 if index % 10 else (index + 1) % 4}" for index in chunk],
                "explained_prob": pa.array(rng.uniform(0.3, 1, len(chunk)), pa.float32()),
                "method": ["lime"] * len(chunk),
                "seed": pa.array(list(chunk), pa.int64()),
                "num_samples": pa.array([1000] * len(chunk), pa.int32()),
                "num_segments": pa.array([sizes[v] for v in variant], pa.int32()),
                "segments": [segments[v] for v in variant],
                "weights": [rng.normal(0, 0.1, sizes[v]).tolist() for v in variant],
                "intercept": rng.uniform(0, 1, len(chunk)), "score": rng.uniform(0, 1, len(chunk)),
                "local_pred": rng.uniform(0, 1, len(chunk)),
                "mask": [masks[v] for v in variant],
                "config_hash": [config_hash] * len(chunk),
                **({} if stamps is None else {"size": pa.array([stamps[0][i] for i in chunk], pa.int64()),
                                              "mtime_ns": pa.array([stamps[1][i] for i in chunk], pa.int64())}),
                "engine": ["torch"] * len(chunk),
                "seconds": pa.array([0.5] * len(chunk), pa.float32()),
                "run_id": [run_id] * len(chunk),
            })
            full = pa.table({name: table[name] if name in table.column_names else pa.nulls(len(chunk), SCHEMA.field(name).type)
                             for name in SCHEMA.names}, schema=SCHEMA)
            write_part(folder, f"part-{run_id}-{part:05d}.parquet", full)
            part += 1


CHILD = {
    "resume": "from xai_batch.manifest import resume_state, manifest_counts\n"
              "done = resume_state(OUT, {'benchhash00000000'}, False); counts = manifest_counts(OUT)\n"
              "result = {'images_done': len(done), **counts}",
    "verify": "from xai_batch.commands.verify import verify_manifest\n"
              "report = verify_manifest(OUT); result = {'summary': report.summary(), 'problems': report.problems[:3]}",
    "audit": "from xai_batch.analysis.findings import Thresholds, audit_findings\n"
             "from xai_batch.labels import prediction_labeller, truth_labeller\n"
             "report = audit_findings(OUT, PREVIOUS, {'lime'}, truth_labeller(None), prediction_labeller(None), "
             "Thresholds(), 5, findings_to=os.path.join(OUT, 'findings.parquet'))\n"
             "result = {'counts': report['counts'], 'accuracy': report['accuracy']}",
    "report": "from xai_batch.commands.report import run_report\n"
              "import ray; ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
              "done = run_report(OUT, source=SOURCE, progress=False, images='beside')\n"
              "result = {'gallery': done.images, 'page_bytes': os.path.getsize(done.path)}",
    "compact": "from xai_batch.manifest.compact import compact\n"
               "done = compact(OUT); result = done.__dict__",
}


def measure(name: str, code_from: str | None = None, **names: str) -> dict:
    """Run one command in a fresh process (with ``code_from``, that checkout's ``xai_batch``); its wall
    seconds and peak RSS."""
    code = ("import json, os, resource, sys, time\n"
            + "".join(f"{key.upper()} = {value!r}\n" for key, value in names.items())
            + "started = time.perf_counter()\n" + CHILD[name] + "\n"
            "result['seconds'] = round(time.perf_counter() - started, 2)\n"
            "result['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)\n"
            "print('RESULT ' + json.dumps(result, default=str))\n")
    environment = {**os.environ, **({"PYTHONPATH": code_from} if code_from else {})}
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                              cwd=code_from)  # '-c' puts the working folder first on sys.path
    lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
    if finished.returncode or not lines:
        raise SystemExit(f"{name} failed:\n{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _checkpoint(work: str) -> str:
    checkpoint = os.path.join(work, "model.pt")
    if not os.path.exists(checkpoint):
        sys.path.insert(0, os.path.join(HERE, "..", "tests"))
        from helpers import save_random_model

        save_random_model(checkpoint, 4)
    return checkpoint


def live(work: str, images: int) -> dict:
    """An explain over ``images`` empty files: each an error row; the driver's peak RSS."""
    source = os.path.join(work, f"empty-{images}")
    os.makedirs(source, exist_ok=True)
    for index in range(images):
        open(os.path.join(source, f"e{index:07d}.png"), "wb").close()
    checkpoint = _checkpoint(work)
    out = os.path.join(work, f"live-{images}")
    shutil.rmtree(out, ignore_errors=True)
    CHILD["live"] = ("from xai_batch.distributed.run import run_explain\nfrom xai_batch.config import ExplainConfig\n"
                     "import ray; ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
                     "job = run_explain(ExplainConfig(source=SOURCE, out=OUT, checkpoint=CHECKPOINT, actors=1), "
                     "progress=False)\nresult = {'errors': job.errors, 'images': job.images}")
    return measure("live", out=out, source=source, checkpoint=checkpoint)


def resume(work: str, images: int) -> dict:
    """A resumed explain over a SOURCE listing of ``images`` files a manifest holds as done, unchanged: how
    many of them it opened (none should be), the driver's peak RSS and the time."""
    from xai_batch.config import ExplainConfig, config_hash
    from xai_batch.models import resolve_model

    source = os.path.join(work, f"listed-{images}")
    listing = os.path.join(source, "images.txt")
    sizes, times = [], []
    for index in range(images):
        path = os.path.join(source, image_path(index))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(b"\x89PNG not decoded")
        stat = os.stat(path)
        sizes.append(stat.st_size)
        times.append(stat.st_mtime_ns)
    with open(listing, "w") as handle:
        handle.writelines(image_path(index) + "\n" for index in range(images))
    checkpoint = _checkpoint(work)
    out = os.path.join(work, f"resume-{images}")
    shutil.rmtree(out, ignore_errors=True)
    config = ExplainConfig(source=listing, out=out, checkpoint=checkpoint, actors=1)
    digest = config_hash(config, resolve_model(checkpoint).model_id, "lime")
    build(out, images, ["20260101T000000.000000Z-aaaaaa"], 1.0, salt=3, config_hash=digest, stamps=(sizes, times))
    CHILD["resume-live"] = (
        "from xai_batch.distributed.run import run_explain\nfrom xai_batch.config import ExplainConfig\n"
        "import ray; ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
        "job = run_explain(ExplainConfig(source=SOURCE, out=OUT, checkpoint=CHECKPOINT, actors=1), progress=False)\n"
        "result = {'images': job.images, 'already_done': job.skipped, 'opened': job.images - job.unread, "
        "'explained': job.ok + job.errors}")
    return measure("resume-live", out=out, source=listing, checkpoint=checkpoint)


def listing(work: str, lines: int, against: str | None) -> dict:
    """Reading a SOURCE listing of ``lines`` paths: the peak RSS and time of ``discover_images``, with this
    checkout's code and, given ``against``, another's."""
    path = os.path.join(work, f"listing-{lines}.txt")
    with open(path, "w") as handle:
        handle.writelines(f"camera{index % 7}/2026/12/{image_path(index)}\n" for index in range(lines))
    CHILD["listing"] = ("from xai_batch.sources import discover_images\n"
                        "result = {'images': len(discover_images(SOURCE))}")
    CHILD["baseline"] = "import xai_batch.sources\nresult = {}"  # what importing the code alone holds
    results = {"listing_mb": round(os.path.getsize(path) / 2**20, 1)}
    for label, code_from in (("this", None), *((("against", against),) if against else ())):
        results[label] = measure("listing", code_from=code_from, source=path)
        results[f"{label}_imports_only"] = measure("baseline", code_from=code_from)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--live", type=int, nargs="*", default=[],
                        help="Explain folders of this many empty files (each an error row).")
    parser.add_argument("--resume", type=int, nargs="*", default=[],
                        help="Resume explains over listings of this many files, done and unchanged.")
    parser.add_argument("--listings", type=int, nargs="*", default=[],
                        help="Read SOURCE listings of this many lines (discover_images).")
    parser.add_argument("--against", metavar="CHECKOUT",
                        help="With --listings, read them with this checkout's code too, side by side.")
    parser.add_argument("--work", default="/tmp/xai-batch-scale")
    parser.add_argument("--keep", action="store_true", help="Keep the manifests built.")
    parser.add_argument("--built", action="store_true",
                        help="Measure the manifests an earlier run left in --work (--keep, or stopped), not new ones.")
    parser.add_argument("--commands", nargs="*", default=["resume", "verify", "audit", "report", "compact"],
                        help="Which to measure (compact last: it rewrites the manifest).")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    results = {}
    for rows in args.rows:
        out, previous = os.path.join(args.work, f"out-{rows}"), os.path.join(args.work, f"previous-{rows}")
        started = time.perf_counter()
        if not (args.built and os.path.isdir(out) and os.path.isdir(previous)):
            for target in (out, previous):
                shutil.rmtree(target, ignore_errors=True)
            build(previous, rows, ["20260101T000000.000000Z-aaaaaa"], 0.05, salt=1)
            build(out, rows, ["20260102T000000.000000Z-bbbbbb", "20260103T000000.000000Z-cccccc"], 0.05, salt=2)
        size = sum(os.path.getsize(os.path.join(out, "manifest", f)) for f in os.listdir(os.path.join(out, "manifest")))
        results[rows] = {"build_seconds": round(time.perf_counter() - started, 1), "manifest_mb": round(size / 2**20)}
        for name in args.commands:
            results[rows][name] = measure(name, out=out, previous=previous, source=args.work)
            print(rows, name, results[rows][name], flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(previous, ignore_errors=True)
    for images in args.live:
        results[f"live-{images}"] = live(args.work, images)
        print("live", images, results[f"live-{images}"], flush=True)
    for lines in args.listings:
        results[f"listing-{lines}"] = listing(args.work, lines, args.against)
        print("listing", lines, results[f"listing-{lines}"], flush=True)
    for images in args.resume:
        results[f"resume-{images}"] = resume(args.work, images)
        print("resume", images, results[f"resume-{images}"], flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
