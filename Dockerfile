# The operations layer's image: the Prefect worker (and, with another start command,
# the Prefect server) of a LiteLLM + Langfuse stack on Railway.
#
#   docker/entrypoint.sh worker   bootstrap, status server, deploy-verify, process worker
#   docker/entrypoint.sh server   create the "prefect" database if missing, prefect server
#
# Pinned: the Python patch release, PostgreSQL's client major, uv, and every Python
# package through uv.lock (`uv sync --frozen` fails rather than re-resolve).
#
# The client major EQUALS the server's (Railway runs PostgreSQL 16): pg_dump refuses
# servers newer than itself, and a newer pg_restore writes settings an older server
# rejects (pg_restore 17 sends `SET transaction_timeout`, unknown to 16, and the restore
# aborts under --exit-on-error). Raise it together with the server's major.
FROM python:3.11.11-slim-bookworm

ARG PG_CLIENT_MAJOR=16
ENV DEBIAN_FRONTEND=noninteractive

# PostgreSQL client tools from the PostgreSQL project's own apt repository (PGDG):
# Debian bookworm only ships 15.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
    && install -d /usr/share/postgresql-common/pgdg \
    && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends "postgresql-client-${PG_CLIENT_MAJOR}" \
    && apt-get purge -y gnupg && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dump --version && pg_restore --version

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /bin/

WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

# Dependencies first (a layer that only changes with uv.lock), then the project.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY . .
RUN uv sync --frozen --no-dev && chmod +x docker/entrypoint.sh

ENV PATH="/app/.venv/bin:${PATH}" \
    OPS_PROJECT_DIR=/app \
    PYTHONUNBUFFERED=1 \
    PREFECT_RESULTS_PERSIST_BY_DEFAULT=true \
    PREFECT_LOCAL_STORAGE_PATH=/data/prefect-results \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["worker"]
