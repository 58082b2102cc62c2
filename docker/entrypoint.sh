#!/usr/bin/env bash
# Start command of the image, by role:
#
#   entrypoint.sh server   the Prefect server: create its database in the stack's
#                          Postgres when missing, then `prefect server start`.
#   entrypoint.sh worker   the Prefect worker: start the status server (/health,
#                          /metrics), bootstrap the control plane (pool, blocks,
#                          channels, automations, `prefect deploy --all`), queue one
#                          deploy-verify run (this start is a new deploy), then the
#                          process worker.
#   entrypoint.sh <cmd>    anything else runs as given (a shell, a one-off flow run).
set -euo pipefail
cd "${OPS_PROJECT_DIR:-/app}"

role="${1:-worker}"
stack="${STACK_NAME:-production}"
pool="${OPS_WORK_POOL:-ops}"

case "$role" in
  server)
    python -m deployments.server_db
    exec prefect server start \
      --host "${PREFECT_SERVER_API_HOST:-::}" \
      --port "${PREFECT_SERVER_API_PORT:-${PORT:-4200}}"
    ;;

  worker)
    mkdir -p "${PREFECT_LOCAL_STORAGE_PATH:-/data/prefect-results}"
    # The status server first: /health (JSON) and /metrics (Prometheus text) from the
    # health sweep's latest status, on Railway's healthcheck port. It answers 200
    # ("starting") while the bootstrap below still waits for the API, so the healthcheck
    # does not depend on how long the Prefect server takes to come up.
    python -m deployments.status_server --stacks "$stack" \
      --port "${OPS_HEALTH_PORT:-${PORT:-8080}}" &

    # Waits for the API (OPS_API_WAIT_S, default 300 s); a failure exits non-zero so
    # Railway restarts the service, with the reason in the deploy logs.
    python -m deployments.bootstrap --stack "$stack" --work-pool "$pool" --deploy

    # A new container is a new deploy: verify the stack once. Queued now, picked up by
    # the worker below; a failure to queue is not a reason to stay down.
    if [ "${OPS_VERIFY_ON_START:-true}" = "true" ]; then
      prefect deployment run "deploy-verify/$stack" --tag on-start \
        || echo "entrypoint: could not queue deploy-verify/$stack" >&2
    fi

    exec prefect worker start --pool "$pool" --type process \
      --name "${RAILWAY_SERVICE_NAME:-prefect-worker}-${HOSTNAME:-1}"
    ;;

  *)
    exec "$@"
    ;;
esac
