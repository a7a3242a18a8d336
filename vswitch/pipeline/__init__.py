"""The dataplane pipeline: one module per stage, wired together in ``graph``."""
