# slimeflow's Airflow image: the official Airflow 3.3.2 image (Postgres driver, entrypoint,
# `airflow` user) plus our exact pins. requirements.txt names what we need, constraints.txt locks
# every transitive version, the same files CI installs from.
# AIRFLOW_IMAGE is the official image; `make test-compose`, which reaches no registry, builds a
# local one with the same layout (tests/compose/) and passes it here.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

# openssh-client only for operators who want `ssh -o StrictHostKeyChecking=yes node` from inside
# the container to debug; the DAGs themselves use paramiko/asyncssh through Airflow's SSH hooks.
USER root
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-client \
 && rm -rf /var/lib/apt/lists/*
USER airflow

COPY --chown=airflow:root requirements.txt constraints.txt /opt/slimeflow/
RUN pip install --no-cache-dir -r /opt/slimeflow/requirements.txt -c /opt/slimeflow/constraints.txt \
 && pip check

# dags/, plugins/ and include/ are mounted by docker-compose.yaml (edit without rebuilding); the
# copies below make the image usable on its own (Kubernetes, a registry) as well.
COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/
COPY --chown=airflow:root include/ /opt/airflow/include/
ENV PYTHONPATH=/opt/airflow/plugins \
    SLIMEFLOW_INCLUDE_DIR=/opt/airflow/include
