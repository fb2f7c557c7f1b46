"""Runnable pipelines and commands (``registry``): each pipeline module is
its options, its checks, its tables and a ``run(argv)`` that builds its graph
from composite transforms inside one ``launcher.Job``."""
