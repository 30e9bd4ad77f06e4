#!/usr/bin/env bash
# make container-run: the image on 127.0.0.1:<port> (host network, so the loopback is the host's), the API key
# from the environment.   deploy/container/run.sh <image tag> <port>
set -euo pipefail
image=$1 port=$2
source "$(dirname "$0")/engine.sh"
if [ -z "${DOMAINLIFT_API_KEY:-}" ]; then
  echo "error: set DOMAINLIFT_API_KEY (clients then send 'Authorization: Bearer <key>')" >&2
  exit 2
fi
use_sandbox_conf "$image"
exec "$ENGINE" run --rm --name "domainlift-$port" --network=host -e DOMAINLIFT_API_KEY \
  "$image" serve --host 127.0.0.1 --port "$port"
