"""One turn's parts below the worker: compaction (with its memory flush), the tool loop, the
step journal, storing the outcome, and the progress shown while it runs."""
