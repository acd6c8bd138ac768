"""What a run's rows mean: audit findings, agreement between methods, the report page's data, study
designs, overlays drawn from an explanation, and a run read back as lime's objects.

Mostly pure functions over manifest rows and pixels; the readers stream a
manifest and write what they find through ``storage`` (``findings``:
``findings.parquet``; ``explanations``: the images re-read from SOURCE). No
Ray, no Click. May import the maths, the methods, the manifest, storage and
the image readers; the commands and the library's face above call them.
"""
