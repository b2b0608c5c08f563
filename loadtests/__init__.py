"""Load tests of the session service with locust: simulated annotators (``locustfile.py``) and a runner
(``python -m loadtests``) that starts a real server, drives it, samples its memory and writes the results."""
