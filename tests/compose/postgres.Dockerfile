# TEST-ONLY stand-in for postgres:16, used by `make test-compose` only (no image registry is
# reachable on the test machine): Debian bookworm's PostgreSQL 15, an entrypoint that creates
# the database from POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB on first start, data in
# /var/lib/postgresql/data, and pg_isready for the healthcheck.
ARG BASE_IMAGE=slimeflow-test/bookworm:minbase
FROM ${BASE_IMAGE}

RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      postgresql-15 postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/* \
 && pg_dropcluster 15 main

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
# the official image's choice: SIGINT is postgres' fast shutdown (SIGTERM waits for clients)
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
