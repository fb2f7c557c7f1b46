"""A Beam plugin (``--beam_plugins local_runner.emulator_plugin``) that the
launcher names for local runs against emulators: Beam's local worker
processes import it at start (``sdk_worker_main``), so that their GCS and
BigQuery clients are anonymous and go to the emulators, as the launcher's
are. Importing it is the call; nothing else imports it."""

from local_runner import beam_patches

beam_patches.use_emulator_clients()
