-- One PostgreSQL server, one database per service (run once, when the data volume is empty).
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
-- MLflow's basic-auth app keeps users and permissions apart from the tracking data.
CREATE DATABASE mlflow_auth;
