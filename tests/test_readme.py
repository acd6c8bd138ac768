"""The README's reference text stays what the code does."""

import os
import re

from click.testing import CliRunner

from xai_batch.cli import cli
from xai_batch.manifest import SCHEMA

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme() -> str:
    with open(README, encoding="utf-8") as handle:
        return handle.read()


def test_explain_help_block_is_the_real_help():
    block = re.search(r"```\n(Usage: xai-batch explain .*?)```", _readme(), re.S).group(1)
    result = CliRunner().invoke(cli, ["explain", "--help"], prog_name="xai-batch", terminal_width=100)
    assert result.exit_code == 0
    assert block == result.output


def test_every_manifest_column_is_documented():
    documented = set(re.findall(r"`([a-z_0-9]+)`", _readme().split("## The manifest")[1].split("```")[0]))
    assert set(SCHEMA.names) <= documented, set(SCHEMA.names) - documented


def test_the_two_setup_commands_exist():
    text = _readme()
    for command in ("./scripts/demo", "./scripts/test"):
        assert command in text
        assert os.access(os.path.join(os.path.dirname(README), command), os.X_OK)
    with open(os.path.join(os.path.dirname(README), ".ci", "run")) as handle:
        assert "./scripts/test" in handle.read()
