"""An image's explanation as plain code: its steps, the plan that orders them, and the replica's executor.

``steps`` are what happens to an image (decode, segment and sample, fit and
build the rows, the quality measures); ``prepared`` what a replica's model
call on an image takes (a module of numpy alone, so that a replica
unpickling it loads nothing more); ``plan`` says which comes next for a
method on an image, as a typed step, so that the two executors cannot
disagree: ``whole`` runs the plan in one process (a model replica with
``--stages replica``), :mod:`xai_batch.distributed.pipeline` runs it on Ray's
CPU tasks and replicas (``--stages workers``). ``instances`` is lime's own
``explain_instance`` cut around the model, for images held in memory
(``LimeImageExplainer.explain_instances``). Nothing here knows of Ray or
Click; it imports the maths, the methods and the manifest's row format, and
:mod:`xai_batch.distributed` imports it.
"""
