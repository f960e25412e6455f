#!/bin/sh
# Runs once, when the PostgreSQL volume is first initialised (/docker-entrypoint-initdb.d):
# a read-only role for Grafana. The detector creates its tables later, so SELECT is granted
# by default privileges on whatever the detector's role creates.
set -eu
password=$(head -n 1 /run/secrets/grafana_db_password)
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v reader_password="$password" <<'SQL'
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password';
GRANT CONNECT ON DATABASE mqtt_anomaly TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE mqtt_anomaly IN SCHEMA public
    GRANT SELECT ON TABLES TO grafana_reader;
SQL
