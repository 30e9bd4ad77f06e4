# Sourced by build.sh and run.sh: ENGINE (podman, or docker where podman is missing) and, on hosts where a plain
# `podman run` fails (a kernel that refuses setrlimit in containers, a hybrid cgroup layout that crun refuses),
# CONTAINERS_CONF pointing podman at containers.conf here (runc without rlimits, host network).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if command -v podman >/dev/null; then ENGINE=podman; elif command -v docker >/dev/null; then ENGINE=docker; else
  echo "error: neither podman nor docker is installed (Debian: apt-get install podman buildah runc)" >&2
  exit 2
fi
use_sandbox_conf() {  # $1: an image to try
  if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ] && ! podman run --rm "$1" true >/dev/null 2>&1; then
    mkdir -p "$here/../../artifacts/container"
    CONTAINERS_CONF=$(cd "$here/../../artifacts/container" && pwd)/containers.conf
    sed "s|DEPLOY_CONTAINER_DIR|$here|" "$here/containers.conf" > "$CONTAINERS_CONF"
    export CONTAINERS_CONF
    echo "plain podman cannot run containers here: using $CONTAINERS_CONF (runc without rlimits, host network)"
    podman run --rm "$1" true
  fi
}
