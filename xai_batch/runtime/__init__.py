"""Ray plumbing: connecting to a cluster, model replicas, and the job driver.

Nothing in here does maths; it moves the stages of :mod:`xai_batch.stages`
and the engine of :mod:`xai_batch.engine` onto Ray tasks and actors.
"""

from xai_batch.runtime.job import JobResult, run_explain

__all__ = ["JobResult", "run_explain"]
