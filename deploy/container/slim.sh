#!/bin/sh
# The end of the image build (bentofile.yaml docker.setup_script, as root): what building needed and running does
# not goes, so the image holds the bento, its virtualenv and Python, and nothing to build with.
set -eu
python3 -m pip uninstall -y -q uv 2>/dev/null || true
rm -rf /root/.cache /home/bentoml/.cache /tmp/* /var/tmp/*
