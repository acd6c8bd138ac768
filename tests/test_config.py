import pytest

from xai_batch.config import ExplainConfig, config_hash
from xai_batch.errors import ConfigError


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path)


def test_auto_draws_up_to_max_samples(folder):
    fixed = ExplainConfig(folder, folder + "/out", num_samples=700, max_samples=900)
    auto = ExplainConfig(folder, folder + "/out", num_samples="auto", max_samples=900)
    assert (fixed.adaptive, fixed.samples_drawn) == (False, 700)
    assert (auto.adaptive, auto.samples_drawn) == (True, 900)


@pytest.mark.parametrize(
    "options,field",
    [({"num_samples": "lots"}, "num_samples"), ({"num_samples": 1}, "num_samples"),
     ({"num_samples": True}, "num_samples"), ({"max_samples": 1}, "max_samples")],
)
def test_bad_sample_counts_name_their_field(folder, options, field):
    with pytest.raises(ConfigError) as raised:
        ExplainConfig(folder, folder + "/out", **options)
    assert raised.value.param == field


def test_the_hash_tells_auto_and_its_ceiling_apart(folder):
    def digest(**options):
        return config_hash(ExplainConfig(folder, folder + "/out", **options), "model")

    assert digest(num_samples="auto") != digest(num_samples=2000)
    assert digest(num_samples="auto", max_samples=1000) != digest(num_samples="auto", max_samples=2000)
    assert digest(num_samples=1000, max_samples=1000) == digest(num_samples=1000, max_samples=2000)  # unused
    assert digest(num_samples=1000, batch_size=7, actors=3) == digest(num_samples=1000)  # speed only
