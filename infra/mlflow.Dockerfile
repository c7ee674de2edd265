# MLflow tracking server for docker-compose: PostgreSQL backend (psycopg2; URIs say
# postgresql+psycopg2://), S3 artifacts (boto3), basic auth configured from the environment at
# start (infra/mlflow-entrypoint.sh).
FROM ghcr.io/mlflow/mlflow:v3.17.2

ENV PIP_NO_CACHE_DIR=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1
# The base image has neither driver; pinned so a rebuild gives the same server.
# Flask-WTF is what the basic-auth app (the `mlflow[auth]` extra) adds.
RUN pip install "psycopg2-binary==2.9.13" "boto3>=1.35,<2" "Flask-WTF<2"
COPY infra/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint
ENTRYPOINT ["/usr/local/bin/mlflow-entrypoint"]
