"""Runnable pipelines: each module builds its graph on a given Pipeline from
typed options, and has a ``run(argv)`` for the command line."""
