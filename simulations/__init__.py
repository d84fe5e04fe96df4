"""Experiment and benchmark runners, and the ``fedmmrec`` command line."""
