"""`dataplane.heap`: what start-up made leaves the cyclic collector's reach, what is made
after is still collected. In a child process: freezing the test runner's own heap would
change what every later test in it can rely on."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc, weakref
from splitproxy.dataplane.heap import freeze_startup_heap

class Node:
    pass

kept = Node()
kept.me = kept  # a cycle from start-up, still in use
frozen = freeze_startup_heap()
assert frozen == gc.get_freeze_count() > 1000, frozen
made = Node()
made.me = made  # a cycle made while serving, then dropped
gone = weakref.ref(made)
del made
gc.collect()
assert gone() is None, "a cycle made after the freeze must still be collected"
assert kept.me is kept
print("frozen", frozen)
"""


def test_the_start_up_heap_is_frozen_and_later_cycles_are_still_collected() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("frozen "), done.stdout
