"""Ray plumbing: connecting to a cluster (``cluster``), an explain run (``run``: what ``explain``,
``audit`` and ``demo`` call), the model replicas (``replicas``) and one scheduler of their calls
(``calls``), the two executors of the per-image plan (``pipeline`` for ``--stages workers``,
``replica_pipeline`` for ``--stages replica``), overlays drawn as tasks (``rendering``: what ``render``,
``stimuli`` and ``report`` call), images held in memory explained for ``LimeImageExplainer``
(``instances``), the Jobs API client, and training (``training``, here or on Ray Train
through ``ray_train``: what ``train`` and ``demo`` call).

Nothing in here decides what an explanation is or what comes next for an
image (:mod:`xai_batch.explaining`, the maths and the methods do) or what a
command writes (the commands do); it moves that work onto Ray tasks and
actors. May import everything below the commands; nothing here is imported
by the explaining steps, maths, methods, engines or manifest.
"""
