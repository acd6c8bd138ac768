"""What a run's rows mean: audit findings, agreement between methods, the report page's data, study
designs, and overlays drawn from an explanation.

Pure functions over manifest rows and pixels: no Ray, no files but the
report's template, no Click. May import the maths, the methods and the
manifest; the commands above call them.
"""
