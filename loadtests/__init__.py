"""Load tests for splitproxy: fault-injectable upstreams, locust users, scenarios, analysis.

`python -m loadtests.scenarios --help` is the entry point; `locust -f loadtests/locustfile.py`
is the interactive one. Nothing in `splitproxy/` imports from here.
"""
