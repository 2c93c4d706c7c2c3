"""Moved to :mod:`synth.netns` (the one namespace helper of tests, QA tool and benchmarks).

Kept as an alias only while ``tests/relay/test_impaired_leg.py`` still imports it from here.
"""

from synth.netns import *  # noqa: F403
from synth.netns import CLONE_NEWNET, Netns, ip  # noqa: F401  (the names still used via here)
