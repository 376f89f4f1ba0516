#!/bin/sh
# Lets a streaming standby (the `scale` profile's postgres-replica) take a base backup and
# stream WAL as `postgres` with its password: initdb's pg_hba.conf allows replication from
# loopback only. Run by the postgres image once, when it initialises a new data folder.
set -eu
echo "host replication postgres all scram-sha-256" >> "$PGDATA/pg_hba.conf"
