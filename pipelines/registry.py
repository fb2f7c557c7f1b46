"""The one list of our pipelines (and commands): ``main.py`` runs them by
name and the Flex Templates are generated for those that are templates.
Each module has ``run(argv)``; a pipeline's also has ``OPTIONS``, its
PipelineOptions classes."""

import dataclasses
import importlib
from typing import FrozenSet


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  module: str
  about: str
  template: bool = True  # a Dataflow Flex Template
  template_required: FrozenSet[str] = frozenset()  # local defaults do not apply

  def load(self):
    return importlib.import_module(self.module)


ENTRIES = (
    Entry('wordcount', 'pipelines.wordcount',
          'batch: text files (local or gs://) -> word counts in text files, '
          'optionally BigQuery or DuckDB',
          template_required=frozenset({'input', 'output'})),
    Entry('user_signin', 'pipelines.user_signin',
          'streaming: sign-in JSON from Pub/Sub (or a JSON-lines file) -> '
          'validated rows, dead letters and per-user counts in BigQuery or '
          'DuckDB', template_required=frozenset({'output_table'})),
    Entry('pubsub_to_bigquery', 'pipelines.pubsub_to_bigquery',
          'streaming: any JSON event from Pub/Sub (or JSON lines) -> rows of '
          'the BigQuery schema you give, dead letters naming reason and field',
          template_required=frozenset({'output_table', 'schema'})),
    Entry('pubsub_to_gcs', 'pipelines.pubsub_to_gcs',
          'streaming: Pub/Sub -> an archive of windowed Avro, Parquet or JSON '
          'files on GCS (or local), every message kept exactly; replay it',
          template_required=frozenset({'output_directory'})),
    Entry('redrive', 'pipelines.redrive',
          'stored dead letters through the current parse (a fixed schema or '
          'UDF): those that pass become rows, marked redriven',
          template=False),
    Entry('query', 'pipelines.query',
          'SQL on the local DuckDB warehouse, also while a stream writes it',
          template=False),
)
PIPELINES = {e.name: e for e in ENTRIES}
TEMPLATES = {e.name: e for e in ENTRIES if e.template}
