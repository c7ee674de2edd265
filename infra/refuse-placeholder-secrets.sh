#!/bin/sh
# Run "$@" (a service's own entrypoint or command) unless a setting in its environment still holds
# a placeholder from .env.example: every placeholder there contains "change-me", and a service
# started with one would be reachable with a password anyone can read in the repository.
# Names the variables, never their values. POSIX sh: runs in every image compose starts.
set -eu
placeholders=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*change-me.*$/\1/p' | sort | tr '\n' ' ')
if [ -n "$placeholders" ]; then
    echo "refusing to start: ${placeholders}still hold the placeholder \"change-me\" from" \
         ".env.example; put real secrets in .env (e.g. openssl rand -hex 24) and start again" >&2
    exit 78  # EX_CONFIG
fi
exec "$@"
