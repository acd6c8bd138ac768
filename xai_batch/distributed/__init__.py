"""Ray plumbing: connecting to a cluster, the model replicas, the explain pipeline and the per-image
stages it runs as tasks, the Jobs API client, and Ray Train.

Nothing in here decides what an explanation is (the maths and the methods
do) or what a command writes (the commands do); it moves that work onto Ray
tasks and actors. May import everything below the commands; nothing here is
imported by the maths, methods, engines or manifest.
"""
