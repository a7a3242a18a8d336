"""The sans-I/O core: tables, pipeline and counters, driven by the runtime with frames and time."""
