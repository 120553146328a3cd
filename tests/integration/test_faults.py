#!/usr/bin/env python3
# ringbid-test-timeout: 600
"""The fault tests' short form, run by `make check`: tests/fault/test_faults.py (services and
PostgreSQL killed under load, links cut, a laptop asleep, PostgreSQL slowed, the journal's disk
full). `make soak` runs the long form of the same file."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fault"))

import test_faults  # noqa: E402

if __name__ == "__main__":
    test_faults.main()
