# Postgres and Redis for the smoke run only (deploy/docker/smoke.sh), from Debian's own packages on
# the same debootstrap base, since no registry serves their images here. Kubernetes uses its own
# (deploy/k8s/datastores) or managed services. One image, two commands:
#   postgres:  docker run kyb-smoke-datastores               (trust auth on the smoke network only)
#   redis:     docker run --user redis kyb-smoke-datastores redis-server --bind 0.0.0.0 --protected-mode no
ARG BASE_IMAGE=kyb-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 redis-server \
 && rm -rf /var/lib/apt/lists/*
USER postgres
ENV PGDATA=/var/lib/postgresql/smoke
# UTF-8 explicitly: in a container without a locale initdb would pick SQL_ASCII, and band names are not ASCII.
RUN /usr/lib/postgresql/15/bin/initdb --auth=trust --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
 && echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf" \
 && echo "host all all 0.0.0.0/0 trust" >> "$PGDATA/pg_hba.conf"
EXPOSE 5432 6379
CMD ["/usr/lib/postgresql/15/bin/postgres"]
