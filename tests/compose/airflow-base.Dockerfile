# TEST-ONLY stand-in for apache/airflow:3.3.2-python3.11, used by `make test-compose` only.
# The test machine reaches no image registry, so this rebuilds what the official image gives
# our Dockerfile, on a Debian bookworm base made with debootstrap: user `airflow` (uid 50000,
# gid 0, home /home/airflow), AIRFLOW_HOME=/opt/airflow, an entrypoint that runs `airflow`,
# curl for the healthchecks, Python 3.11 (bookworm's python3) with a venv on PATH so that
# `pip install` works as the airflow user, and the postgres driver.
ARG BASE_IMAGE=slimeflow-test/bookworm:minbase
FROM ${BASE_IMAGE}

RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv curl dumb-init \
 && rm -rf /var/lib/apt/lists/*

# The machine's CA bundle, so that pip reaches PyPI through this machine's egress (only this
# test image carries it; production builds on the official image and its own CAs).
COPY host-ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

RUN useradd --uid 50000 --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow \
 && mkdir -p /opt/airflow/dags /opt/airflow/logs /opt/airflow/plugins /opt/airflow/config \
 && chown -R airflow:0 /opt/airflow /home/airflow \
 && chmod -R g+rwX /opt/airflow /home/airflow

# The official image's PATH puts ~/.local/bin first; a venv there keeps that layout.
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW_USER_HOME_DIR=/home/airflow \
    PATH=/home/airflow/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_DISABLE_PIP_VERSION_CHECK=1
USER airflow
RUN python3 -m venv /home/airflow/.local \
 && pip install --no-cache-dir -q "apache-airflow[postgres]==3.3.2"

COPY airflow-entrypoint.sh /entrypoint
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/entrypoint"]
CMD []
