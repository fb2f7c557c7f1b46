"""The local runner of our pipelines, in one place. Its one entry is
``stream.LocalRun`` (the launcher makes one per local run):

- ``pump``: pulls Pub/Sub in large batches, leases each message until it is
  stored, acknowledges stored ones, extends the rest (``leases``);
- ``channel``: the private TestStream channel from the pump to Beam's runner;
- ``runs``: each run's own counts and leases, reached from its steps' hooks;
- ``stream``: running, progress (``progress``), stop and drain;
- ``beam_patches``: every change to Beam's internals, behind one switch.

Beam's own Pub/Sub read on the local runner acknowledges each pull of at
most 10 messages before processing it, so a kill, a stop or a failed bundle
loses what is in flight, and per-bundle costs cap it near 700 messages/s.
Here a message is acknowledged only once its row or dead letter is stored.
Local runner only (the sinks must run in the launcher's process): on
Dataflow, Beam's ``ReadFromPubSub`` checkpoints and deduplicates.
"""
