"""Faults injected into Ray worker processes by ``worker_process_setup_hook``.

Files whose name contains ``poison-decode`` kill the worker that decodes
them; an all-magenta image kills the model replica that evaluates it. Both
crash the process outright (``os._exit``), as a segfault in a decoder or an
out-of-memory kill would.
"""

import os

import numpy as np

MAGENTA = (255, 0, 255)


def inject() -> None:
    import xai_batch.engines as engine
    import xai_batch.explaining.steps as steps

    decode = steps.decode

    def crashing_decode(source, path, *args, **kwargs):
        if "poison-decode" in path:
            os._exit(1)
        return decode(source, path, *args, **kwargs)

    def crashing(predict):
        def crashing_predict(self, image, hidden, segments, rows):
            if (np.asarray(image) == MAGENTA).all():
                os._exit(1)
            return predict(self, image, hidden, segments, rows)

        return crashing_predict

    steps.decode = crashing_decode  # the workers' prepare decodes through it too
    for kind in (engine.TorchEngine, engine.OnnxEngine):  # whichever engine the replica runs
        kind.predict = crashing(kind.predict)
