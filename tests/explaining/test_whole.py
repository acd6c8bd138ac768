"""The replica's executor without Ray: what a GPU replica runs, on the CPU, against lime's own explanations.

On CUDA the replica segments the images of a call together on its device
(``quickshift_on_device``) and fits the surrogate there; on a CPU it uses lime's
own quickshift. Here the device path is forced on the CPU (``on_device=True``),
so the rows a GPU replica would write are checked against lime 0.2.0.1's, for
calls of one image and of several.
"""

import os

import pyarrow as pa
from helpers import assert_rows_are_limes
from xai_batch.config import ExplainConfig
from xai_batch.distributed.replicas import ModelReplica
from xai_batch.explaining.steps import decode
from xai_batch.explaining.whole import explain_whole
from xai_batch.manifest import SCHEMA, RowContext
from xai_batch.models import resolve_model
from xai_batch.storage import locate

NUM_SAMPLES = 60


def test_the_device_path_gives_limes_rows_in_calls_of_one_image_and_of_two(photos, random_checkpoint, tmp_path):
    # KernelSHAP beside it: shap seeds numpy's global generator, which two images in flight share
    config = ExplainConfig(source=photos, out=str(tmp_path / "out"), checkpoint=random_checkpoint,
                           num_samples=NUM_SAMPLES, seed=42, batch_size=50, methods=("lime", "kernelshap"))
    model = resolve_model(random_checkpoint)
    context = RowContext(model_id=model.model_id, class_names=model.class_names,
                         config_hashes={"lime": "h", "kernelshap": "k"},
                         num_samples=NUM_SAMPLES, top_labels=1, num_features=config.num_features,
                         preprocessing=model.preprocessing)
    replica = ModelReplica(model.payload, "fp32", config.batch_size, threads=1)
    source = locate(photos)
    paths = sorted(os.path.relpath(os.path.join(folder, name), photos)
                   for folder, _, names in os.walk(photos) for name in names)
    # the first converted to Lab in the replica, the others in their decoding tasks (as a GPU replica's are)
    decoded = [decode(source, path, config, model.preprocessing, lab=number > 0) for number, path in enumerate(paths)]
    assert [image.lab is not None for _, image in decoded] == [False, True, True]
    rows = []
    for call in (decoded[:1], decoded[1:]):  # three photos; the call of two has both images in flight at once
        done = explain_whole(call, config, context, replica._predict, replica._gradients, "cpu", on_device=True)
        assert all(ok for _, _, ok in done.outcomes) and done.segmented_on_device == len(call)
        rows += [row for method_rows in done.rows for row in method_rows if row["method"] == "lime"]
    assert_rows_are_limes(pa.Table.from_pylist(rows, schema=SCHEMA), photos, random_checkpoint, NUM_SAMPLES)


def test_a_gpu_replica_takes_as_many_images_a_call_as_a_quarter_of_its_memory_holds():
    from xai_batch.distributed.replica_pipeline import images_per_call
    from xai_batch.maths.device_superpixels import memory_per_image
    from xai_batch.maths.superpixels import Quickshift

    params, gib = Quickshift(), 2**30
    assert memory_per_image(224, 224, params) == 96 * 25 * 224 * 224  # K = 25 taps a window row at lime's size

    def per_call(*placement, crop=224):
        return images_per_call([{"device": device, "device_memory": memory} for device, memory in placement],
                               crop, params)

    assert per_call(("cpu", None)) == per_call(("cpu", None), ("cuda:0", 80 * gib)) == 4  # lime's own on a CPU
    assert per_call(("cuda:0", 80 * gib)) == per_call(("cuda:0", 32 * gib)) == 64
    assert per_call(("cuda:0", 16 * gib)) == 35  # 4 GiB / 120 MB
    assert per_call(("cuda:0", 80 * gib), ("cuda:1", 8 * gib)) == 17  # the smallest GPU decides: 2 GiB / 120 MB
    assert per_call(("cuda:0", 80 * gib), crop=512) == 34  # 20 GiB / 629 MB
    assert per_call(("cuda:0", 80 * gib), crop=1024) == 8  # the largest crop: 20 GiB / 2.5 GB, within the quarter
    assert per_call(("cuda:0", 4 * gib), crop=1024) == 1  # at least one, whatever the GPU
