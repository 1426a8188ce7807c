"""Reliability in figures: fuzzers, load, faults and security checks, quick in the tests, long in `ibis stress`.

Each module returns plain records (what was tried, what happened) so the
tests assert on them and `report.py` prints them into docs/reliability.md.
"""
