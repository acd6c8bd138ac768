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


def test_stages_are_checked_and_auto_is_the_replica_only_on_cuda():
    from xai_batch.distributed.run import pipeline_for
    from xai_batch.distributed.pipeline import Pipeline
    from xai_batch.distributed.replica_pipeline import ReplicaPipeline

    with pytest.raises(ConfigError, match="stages must be one of auto, workers, replica, got 'gpu'"):
        ExplainConfig(source=".", out="out", stages="gpu")
    cpu, cuda = [{"device": "cpu"}], [{"device": "cuda:0"}, {"device": "cuda:1"}]
    assert pipeline_for("auto", cuda) is ReplicaPipeline and pipeline_for("auto", cpu) is Pipeline
    assert pipeline_for("auto", [*cpu, *cuda]) is Pipeline  # a CPU replica would be the slow one
    assert pipeline_for("replica", cpu) is ReplicaPipeline and pipeline_for("workers", cuda) is Pipeline
