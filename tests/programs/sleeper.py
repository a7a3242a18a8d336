"""A container that does nothing for ten minutes, findable by its argument.

Usage: sleeper.py MARKER
MARKER is not used; it only makes the process easy to find in the process table
(``processes_with_argument``), so a test can tell whether the container still runs.
"""
import time

time.sleep(600)
