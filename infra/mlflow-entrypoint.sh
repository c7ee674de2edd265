#!/bin/sh
# Start `mlflow server "$@"` with basic auth: the auth app's config is written from the
# environment at start, so no password or database URI is baked into the image or the repository.
#   MLFLOW_AUTH_DATABASE_URI    users and permissions store (e.g. postgresql://.../mlflow_auth)
#   MLFLOW_AUTH_ADMIN_USERNAME  MLFLOW_AUTH_ADMIN_PASSWORD  the admin created on first start
#   MLFLOW_FLASK_SERVER_SECRET_KEY  signs the auth app's CSRF tokens
#   MLFLOW_BACKEND_STORE_URI    the tracking store; `mlflow server` reads it from the environment,
#                               so its password stays off the command line (ps, /proc/*/cmdline)
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI}"
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY}"
config="${MLFLOW_AUTH_CONFIG_PATH:-${TMPDIR:-/tmp}/mlflow-basic-auth.ini}"
umask 077
cat > "$config" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$config"
exec mlflow server --app-name basic-auth "$@"
