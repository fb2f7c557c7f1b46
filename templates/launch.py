"""The Flex Template launcher's Python file (FLEX_TEMPLATE_PYTHON_PY_FILE):
runs the pipeline named by $BEAM_PIPELINE with the template's parameters."""

import sys

from pipelines.flex_template import launch

if __name__ == '__main__':
  sys.exit(launch())
