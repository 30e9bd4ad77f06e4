"""Import an export variant into the BentoML model store, so a service (and `bentoml build`) can reference it.

The model is named after the job and versioned by the variant's manifest digest (the sha256 over its files):
importing the same artifact again finds that version and does nothing; a re-exported variant is a new version.
The files go to <model>/artifact/ (BentoML keeps its own model.yaml beside them), where the service verifies
them against the manifest again before loading.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from domainlift import manifest, tasks
from domainlift.errors import ManifestError

log = logging.getLogger(__name__)

ARTIFACT = "artifact"  # sub-directory of the stored model that holds the variant exactly as exported


def summary(m: dict) -> dict:
    """What a client of the service is told about its model (POST /model) and the store keeps as metadata."""
    quality = m.get("quality", {})
    metric = tasks.MAIN_METRIC[m["task"]]
    return {
        "job": m["config"]["job"],
        "variant": m["variant"],
        "task": m["task"],
        "runtime": m["runtime"],
        "labels": list(m["labels"]),
        "metric": metric,
        "score": quality.get(metric),
        "ratio_to_checkpoint": quality.get("ratio"),
        "accepted": quality.get("accepted"),
        "created": m["created"],
        "sha256": m["sha256"],
        "parent_sha256": m["parent"]["sha256"],
    }


PROMOTED = "promoted.json"  # in artifacts/<job>/serve/: the candidate `make readapt` promoted, served from then on


def served_variant(cfg) -> Path:
    """The variant `make serve` serves for a job: the promoted candidate when there is one and serve.variant is
    best, else artifacts/<job>/export/<serve.variant>."""
    promoted = cfg.job_dir / "serve" / PROMOTED
    if promoted.is_file() and cfg.serve.variant == "best":
        return Path(json.loads(promoted.read_text())["variant_dir"])
    return cfg.job_dir / "export" / cfg.serve.variant


def check_stored(artifact_dir: Path, tag: str) -> dict:
    """The store's copy of a variant: its files match its manifest, and the manifest is the one the tag was made
    from (the tag's version is the manifest digest), so rewriting a file and manifest.json together is caught."""
    try:
        m = manifest.verify(artifact_dir)
    except ManifestError as e:
        raise ManifestError(f"the model store's copy of {tag} is damaged: {e}") from e
    version = tag.partition(":")[2]
    if not m["sha256"].startswith(version):
        raise ManifestError(
            f"the model store's copy of {tag} holds an artifact with digest {m['sha256'][:20]}, not the one its tag "
            "names: it was altered after import"
        )
    return m


def model_name(job: str) -> str:
    """BentoML names allow lower-case letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^a-z0-9_.-]+", "-", job.lower()).strip("-_.") or "domainlift"


def import_variant(variant_dir: Path) -> str:
    """Verify the variant, copy it into the model store unless that version is there; returns the model tag."""
    import bentoml
    from bentoml.exceptions import NotFound

    m = manifest.verify(variant_dir)  # never import an artifact whose files fail their hashes
    if m.get("kind") != "variant":
        raise ManifestError(f"{variant_dir} is a {m.get('kind')}, not an export variant: run `make export`")
    tag = f"{model_name(m['config']['job'])}:{m['sha256'][:20]}"
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        stored = None
    if stored is not None:
        try:
            check_stored(stored.path_of(ARTIFACT), tag)
            return tag
        except ManifestError as e:  # a damaged copy: the artifact is the source of truth
            log.warning("%s; re-importing it from %s", e, variant_dir)
            bentoml.models.delete(tag)
    info = summary(m)
    with bentoml.models.create(tag, labels={"task": info["task"], "variant": info["variant"]}, metadata=info) as model:
        shutil.copytree(Path(variant_dir).resolve(), model.path_of(ARTIFACT))
    return tag
