"""The ``dualwrite`` command line: start, steer and inspect migrations."""
