"""One turn's parts below the worker: its progress, the tool loop, its journal, its storing."""
