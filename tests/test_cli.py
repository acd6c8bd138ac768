"""The command line through Click's CliRunner, on the session's real Ray."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from helpers import assert_verified
from xai_batch.cli import cli
from xai_batch.manifest import read_manifest


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version_and_help():
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("xai-batch, version ")
    help_text = invoke("explain", "-h").output
    for option in ("--out", "--checkpoint", "--num-samples", "--top-labels", "--hide-color", "--seed",
                   "--batch-size", "--actors", "--precision", "--address"):
        assert option in help_text


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num-samples", "1"], "Invalid value for '--num-samples'"),
        (["--num-samples", "lots"], "'lots' is neither a sample count nor 'auto'"),
        (["--max-samples", "1"], "Invalid value for '--max-samples'"),
        (["--precision", "fp8"], "Invalid value for '--precision'"),
        (["--hide-color", "300"], "Invalid value for '--hide-color'"),
        (["--hide-color", "grey"], "'grey' is neither a grey level 0..255 nor 'mean'"),
        (["--actors", "0"], "Invalid value for '--actors'"),
        (["--num-samples", "10000000"], "Invalid value for '--num-samples': 10000000 is more than the 100000 allowed"),
        (["--num-samples", "auto", "--max-samples", "100001"], "Invalid value for '--max-samples': 100001 is more"),
        (["--batch-size", "100000"], "Invalid value for '--batch-size': 100000 is more than the 4096 allowed: a batch"),
        (["--top-labels", "21"], "Invalid value for '--top-labels': 21 is more than the 20 allowed"),
        (["--max-pixels", "2000000000"], "Invalid value for '--max-pixels'"),
        (["--checkpoint", "/no/such/model.pt"], "Invalid value for '--checkpoint'"),
        (["--engine", "tensorrt"], "Invalid value for '--engine'"),
        (["--engine", "onnxruntime", "--precision", "bf16"], "Invalid value for '--engine': ONNX Runtime runs fp32 only"),
    ],
)
def test_bad_options_are_usage_errors(photos, tmp_path, args, message):
    result = invoke("explain", photos, "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_the_token_does_not_cross_the_network_in_clear(monkeypatch):
    from xai_batch.distributed.cluster import check_token_transport

    monkeypatch.setenv("RAY_AUTH_TOKEN", "a" * 64)
    for command in (["jobs", "--address", "http://192.0.2.7:8265", "list"],
                    ["submit", "--address", "http://ray.example.com:8265", "explain", "s3://b/photos", "--out",
                     "s3://b/runs/1", "--checkpoint", "s3://b/model.pt"]):
        result = invoke(*command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "is plain HTTP to another machine" in result.output and "--insecure" in result.output
    for address in ("https://ray.example.com", "http://127.0.0.1:8265", "http://127.0.0.2:8265", "http://[::1]:8265",
                    "http://localhost:8265"):
        check_token_transport(address, insecure=False)  # encrypted, or never leaves the machine
    check_token_transport("http://192.0.2.7:8265", insecure=True)


def test_credentials_in_a_uri_are_neither_printed_nor_submitted():
    result = invoke("render", "mock://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/run", "--no-progress")
    assert result.exit_code == 2 and "no manifest under 'mock://***@bucket/run'" in result.output, result.output
    submitted = invoke("submit", "--address", "http://127.0.0.1:9", "explain", "s3://AKIAEXAMPLE:wJalrXUtnFEMI@b/photos",
                       "--out", "s3://b/runs/1", "--checkpoint", "s3://b/model.pt")
    assert submitted.exit_code == 2 and "Invalid value for 'SOURCE': a URI with credentials in it" in submitted.output
    for output in (result.output, submitted.output):
        assert "wJalr" not in output and "AKIAEXAMPLE" not in output


def test_usage_errors_start_no_ray(tmp_path):
    code = ("import sys\nfrom xai_batch.cli import cli\n"
            f"try:\n    cli(['explain', {str(tmp_path / 'missing')!r}, '--out', {str(tmp_path / 'o')!r}])\n"
            "except SystemExit as e:\n    print(e.code, 'ray' in sys.modules, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    assert "Invalid value for 'SOURCE'" in done.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_source_is_a_usage_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    result = invoke("explain", str(locked), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "SOURCE" in result.output


def test_missing_source_and_out(tmp_path):
    missing = invoke("explain", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert missing.exit_code == 2 and "Invalid value for 'SOURCE'" in missing.output
    no_out = invoke("explain", str(tmp_path))
    assert no_out.exit_code == 2 and "Missing option '--out'" in no_out.output


@pytest.mark.parametrize("command", [["render"], ["report"], ["stimuli", "--to", "pictures", "--per-cell", "1"]])
def test_a_folder_without_a_manifest_is_named_as_the_argument_it_is(tmp_path, command):
    """OUT is an argument of these commands: the error names it so, not as explain's --out."""
    result = invoke(command[0], str(tmp_path), *[str(tmp_path / a) if a == "pictures" else a for a in command[1:]])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for 'OUT': no manifest under {str(tmp_path)!r}: run xai-batch explain first" in result.output


def test_top_labels_beyond_the_models_classes_is_a_usage_error(photos, random_checkpoint, tmp_path):
    result = invoke("explain", photos, "--out", str(tmp_path / "o"), "--checkpoint", random_checkpoint,
                    "--top-labels", "5")
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--top-labels': top_labels 5 exceeds the model's 4 classes" in result.output


def test_a_bad_checkpoint_is_a_one_line_error(photos, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    result = invoke("explain", photos, "--out", str(tmp_path / "o"), "--checkpoint", str(bad))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "does not load with torch.load(weights_only=True)" in result.output


def test_missing_imagenet_weights_offline(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    result = invoke("explain", photos, "--out", str(tmp_path / "o"))
    assert result.exit_code == 1, result.output
    assert "ResNet18_Weights.IMAGENET1K_V1 weights are not cached" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_explain_end_to_end(ray_session, shapes_data, shapes_model, tmp_path):
    out = tmp_path / "run"
    result = invoke("explain", shapes_data["holdout"], "--out", str(out), "--checkpoint", shapes_model,
                    "--num-samples", "20", "--batch-size", "16", "--hide-color", "mean", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "6 images: 6 explained, 0 errors, 0 already done; 6 rows" in result.output
    table = read_manifest(str(out))
    assert table.num_rows == 6 and set(table.column("status").to_pylist()) == {"ok"}
    assert table.column("path").to_pylist()[0] == "disc/disc_0000.png"
    record = json.loads((out / "job.json").read_text())
    assert record["config"]["hide_color"] is None and record["state"] == "completed"
    assert_verified(str(out), shapes_data["holdout"])
    again = invoke("explain", shapes_data["holdout"], "--out", str(out), "--checkpoint", shapes_model,
                   "--num-samples", "20", "--batch-size", "16", "--hide-color", "mean", "--no-progress")
    assert again.exit_code == 0 and "6 images: 0 explained, 0 errors, 6 already done (6 unread: size and time unchanged); 0 rows" in again.output
    assert read_manifest(str(out), current=False).num_rows == 6


def test_an_empty_folder_is_a_warning_not_a_failure(ray_session, random_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        cli, ["explain", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--checkpoint", random_checkpoint])
    assert result.exit_code == 0, result.output
    assert "0 images: 0 explained, 0 errors, 0 already done" in result.stdout and "warning: no image files under" in result.stderr
    assert json.loads((tmp_path / "o" / "job.json").read_text())["state"] == "completed"


def test_help_does_not_import_torch_or_ray():
    """`xai-batch --help` answers at once: the heavy imports wait for a command to need them."""
    code = "import sys, xai_batch.cli; print('torch' in sys.modules, 'ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr


RAW_SLASH = "s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG@bucket/r1"  # a secret key with a raw '/'
AZURE = "abfs://acct.blob.core.windows.net/c/p?client_id=app&client_secret=AzureS3cret&tenant_id=t"


def test_a_secret_with_a_slash_or_in_a_query_is_neither_printed_nor_submitted(photos, tmp_path):
    """Issue 31, finding 1: pyarrow's traceback printed the raw-slash secret; submit passed it and query
    credentials on; the usage error for SOURCE printed it whole."""
    results = [invoke("explain", photos, "--out", RAW_SLASH, "--no-progress"),
               invoke("explain", RAW_SLASH, "--out", str(tmp_path / "o")),
               invoke("explain", AZURE, "--out", str(tmp_path / "o"))]
    for result in results:
        assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
        assert len([line for line in result.output.splitlines() if line.strip()]) <= 3, result.output  # usage, one line
    for uri, name in ((RAW_SLASH, "SOURCE"), (AZURE, "SOURCE"), (RAW_SLASH.replace("r1", "photos"), "SOURCE")):
        submitted = invoke("submit", "--address", "http://127.0.0.1:9", "explain", uri, "--out", "s3://b/runs/1")
        assert submitted.exit_code == 2, submitted.output
        assert f"Invalid value for '{name}': a URI with credentials in it" in submitted.output, submitted.output
        results.append(submitted)
    out_query = invoke("submit", "--address", "http://127.0.0.1:9", "explain", "s3://b/photos", "--out", AZURE)
    assert out_query.exit_code == 2 and "Invalid value for '--out'" in out_query.output, out_query.output
    for result in [*results, out_query]:
        for secret in ("K7MDENG", "wJalr", "AzureS3cret"):
            assert secret not in result.output, result.output


def test_a_bug_s_traceback_and_the_log_are_redacted(tmp_path):
    """What no command turns into one line still shows no secret: the traceback hook and the log filter."""
    code = ("import logging, sys\nfrom xai_batch import cli\n"
            "sys.argv = ['xai-batch', '-v', 'verify', '--help']\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            f"logging.getLogger('x').warning('reading %s', {RAW_SLASH!r})\n"
            f"raise RuntimeError('bug while reading ' + {RAW_SLASH!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "RuntimeError: bug while reading s3://***@bucket/r1" in done.stderr, done.stderr
    assert "WARNING x: reading s3://***@bucket/r1" in done.stderr, done.stderr
    assert "K7MDENG" not in done.stderr and "wJalr" not in done.stderr


def test_joining_a_remote_gcs_in_clear_is_refused_before_any_work_unless_insecure(photos, random_checkpoint, tmp_path,
                                                                                monkeypatch):
    """Issue 31, finding 15: a command joining another machine's GCS over plain gRPC is refused, naming
    --insecure, before it reads or writes anything."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", "a" * 64)
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    out = tmp_path / "out"
    refused = invoke("explain", photos, "--out", str(out), "--checkpoint", random_checkpoint, "--address",
                     "192.0.2.7:6379", "--no-progress")
    assert refused.exit_code == 2 and "is Ray's plain gRPC (no TLS) to another machine" in refused.output
    assert "--insecure" in refused.output and not out.exists(), refused.output
    from xai_batch.config import ExplainConfig
    from xai_batch.distributed.cluster import check_join

    check_join("192.0.2.7:6379", insecure=True)  # the user's word: it goes on (to the reachability check)
    assert ExplainConfig(photos, str(out), address="192.0.2.7:6379", insecure=True).insecure
