#!/bin/sh
# The end of the image build (bentofile.yaml docker.setup_script, as root): what building needed and running does
# not goes, so the image holds the bento, its virtualenv and Python, and nothing to build with (BentoML's Debian
# template installs build-essential for packages that compile; every package here comes as a wheel).
set -eu
if command -v apt-get >/dev/null; then
  apt-get purge -y -q --auto-remove build-essential gcc g++ cpp make dpkg-dev >/dev/null 2>&1 || true
  rm -rf /var/lib/apt/lists/* /var/cache/apt/*
fi
python3 -m pip uninstall -y -q uv 2>/dev/null || true
rm -rf /root/.cache /home/bentoml/.cache /tmp/* /var/tmp/*
