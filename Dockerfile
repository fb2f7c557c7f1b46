# One image that is both the Flex Template launcher and the workers' SDK
# container, so launcher and workers run the same Beam, Python and code.
#
#   docker build --build-arg PIPELINE=user_signin -t REGION-docker.pkg.dev/P/R/user-signin:TAG .
#
# The Beam version must match requirements.txt and setup.py (a test checks).
ARG BEAM_VERSION=2.77.0
ARG PY_VERSION=3.11

FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS launcher
FROM apache/beam_python${PY_VERSION}_sdk:${BEAM_VERSION}

ARG PIPELINE=wordcount
ARG WORKDIR=/template
WORKDIR ${WORKDIR}

COPY --from=launcher /opt/google/dataflow/python_template_launcher \
     /opt/google/dataflow/python_template_launcher

COPY requirements.txt setup.py MANIFEST.in main.py ./
COPY pipelines pipelines
COPY transforms transforms
COPY storage storage
COPY local_runner local_runner
COPY templates templates

# Our dependencies, then our package itself, installed once at build time;
# PIP_NO_DEPS keeps the launcher from resolving them again at launch.
RUN pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps . \
 && pip check

ENV BEAM_PIPELINE=${PIPELINE}
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=${WORKDIR}/templates/launch.py
ENV FLEX_TEMPLATE_PYTHON_SETUP_FILE=${WORKDIR}/setup.py
ENV PIP_NO_DEPS=True

# Workers start the Beam SDK harness; the launcher overrides the entrypoint.
ENTRYPOINT ["/opt/apache/beam/boot"]
