"""Past one machine: `precompute --ray` runs the items as Ray tasks (see docs/ray.md).

* `cluster`   connecting (or starting a private Ray), the address probe, stdout kept clean;
              the only module that imports Ray, and only when a run asks for it.
* `executor`  the driver: probe each item's key, submit tasks, store verified results.
* `tasks`     what a worker runs: the one-machine functions with a capturing cache.
* `capture`   the Probe and Capture caches that make the two ends agree on keys.

Importing this package imports nothing heavy (no Ray, no torch): the CLI reads SHARD_ROWS.
"""

SHARD_ROWS = 262_144
"""Rows of A per task in one comparison: a bigger A is split into row shards. Each shard holds
all of B, so fewer, larger shards waste less set-up; 262,144 rows of d=2,304 are 2.4 GB."""
