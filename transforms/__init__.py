"""Reusable Beam transforms and DoFns, each module one job, tested alone:
reading messages, parsing them into rows or dead letters, counting, and the
sinks that store rows with their dead letters."""
