"""Packages ``pipelines``, ``transforms``, ``storage`` and ``local_runner`` so
Dataflow workers import the same code the launcher did (``--setup_file
./setup.py``; the launcher passes it for you)."""

import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


def pinned(name):
  """The version requirements.txt pins for ``name``, so the two cannot drift."""
  with open(os.path.join(HERE, 'requirements.txt')) as f:
    for line in f:
      line = line.split('#')[0].strip()
      if line.split('==')[0].split('[')[0] == name:
        return line
  raise ValueError('%s is not pinned in requirements.txt' % name)


setuptools.setup(
    name='beam-gcp-pipelines',
    version='0.1.0',
    description='Reusable Apache Beam transforms and pipelines for Google Cloud.',
    packages=['pipelines', 'transforms', 'storage', 'local_runner'],
    python_requires='>=3.10',
    install_requires=[
        pinned('apache-beam'),
        pinned('google-cloud-pubsub'),
        pinned('google-cloud-bigquery'),
        pinned('python-dateutil'),
        pinned('duckdb'),
        pinned('msgspec'),
        pinned('shapely'),
    ],
    entry_points={'console_scripts': ['beam-pipelines=pipelines.main:main']},
)
