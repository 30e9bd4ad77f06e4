#!/usr/bin/env bash
# make container: the job's bento as an OCI image, `bentoml containerize` with podman (docker where podman is
# missing), offline apart from the package index: the base image is built here from Debian's packages.
#   deploy/container/build.sh <python> <job config> <image tag> [overrides ...]
set -euo pipefail
python=$1 config=$2 image=$3
shift 3
source "$(dirname "$0")/engine.sh"
base=$("$python" -c "import yaml; print(yaml.safe_load(open('bentofile.yaml'))['docker']['base_image'])")
"$here/base-image.sh" "$ENGINE" "$base"
use_sandbox_conf "$base"
"$python" -m serve --config "$config" --build "$@"
squash=()
[ "$ENGINE" = podman ] && squash=(--opt squash-all)  # one layer: what slim.sh removes is gone, not hidden
"$python" -m bentoml containerize domainlift:latest --backend "$ENGINE" --image-tag "$image" "${squash[@]}"
"$ENGINE" image inspect "$image" --format 'built {{.RepoTags}}: {{.Size}} bytes, user {{.Config.User}}' 2>/dev/null \
  || "$ENGINE" image inspect "$image" >/dev/null
