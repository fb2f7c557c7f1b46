"""The local runner of our pipelines, in one place. Its one entry is
``stream.LocalRun`` (the launcher makes one per local run):

- ``pump``: pulls Pub/Sub in large batches, leases each delivery until the
  runner has settled it, acknowledges settled ones, extends the rest
  (``leases``);
- ``channel``: the private TestStream channel from the pump to Beam's
  runner, in place of the graph's ``ReadFromPubSub`` (an override);
- ``delivery``: when the runner is done with a served batch, whatever its
  messages became;
- ``stream``: running, progress (``progress``), stop and drain;
- ``beam_patches``: every change to Beam's internals, behind one switch.

Beam's own Pub/Sub read on the local runner acknowledges each pull of at
most 10 messages before processing it, so a kill, a stop or a failed bundle
loses what is in flight, and per-bundle costs cap it near 700 messages/s.
Here a message is acknowledged only once the runner is done with whatever
it became: its rows and dead letters stored, or nothing (a UDF's drop).
Local runner only: on Dataflow, Beam's ``ReadFromPubSub`` checkpoints and
deduplicates. The graph is the same in both places and holds no hook.
"""
