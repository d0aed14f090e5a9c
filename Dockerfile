# meshgate gateway image: Flight SQL on 32010, REST + /metrics on 8080.
#
#   docker build -t meshgate .
#   docker run -p 32010:32010 -p 8080:8080 -v "$PWD/products:/products:ro" meshgate
#
# The demo mesh (generated into the /data volume; users and passwords in its banner). It binds
# 127.0.0.1 unless told otherwise, which inside a container nobody outside can reach:
#   docker run -p 32010:32010 -p 8080:8080 meshgate demo --host 0.0.0.0
#
# The default command serves without authentication (every caller is principal `anonymous`,
# policies still apply). For real use mount a users file and override the command, e.g.
#   docker run ... -v "$PWD/users.yaml:/etc/meshgate/users.yaml:ro" meshgate \
#       serve --host 0.0.0.0 --users /etc/meshgate/users.yaml --products /products
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MESHGATE_HOME=/data

WORKDIR /src

# Dependencies first, from pyproject.toml alone: this large layer (pyarrow, datafusion, duckdb …)
# is then reused when only meshgate's own code changes. With no packages copied yet, `pip install .`
# installs just the dependencies (and an empty meshgate, removed again).
COPY pyproject.toml ./
RUN pip install . && pip uninstall -y meshgate

# The install step of the README: `pip install .`.
COPY . .
RUN pip install --no-deps . \
    && meshgate --help >/dev/null \
    && rm -rf /src

# Run as an unprivileged user; registry, audit log and other state live in the /data volume.
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin meshgate \
    && mkdir -p /data /products \
    && chown meshgate:meshgate /data
# Numeric, so that runtimes enforcing runAsNonRoot can check it.
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]

EXPOSE 32010 8080
ENTRYPOINT ["meshgate"]
CMD ["serve", "--host", "0.0.0.0", "--insecure-no-auth", "--products", "/products"]
