"""Drift statistics, traffic capture, and the shipped Prometheus rules and Grafana dashboard."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from domainlift import drift
from serve.capture import Capture, mask, read_captured

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; .ci/run installs it)"
)


def _items(rng, n, confident=True, words=range(100, 120)):
    out = []
    for _ in range(n):
        p = rng.uniform(0.9, 1.0) if confident else rng.uniform(0.5, 0.7)
        logits = np.log(np.array([p, 1 - p]))[:: rng.choice([1, -1])]
        ids = [101, *rng.choice(list(words), size=rng.integers(5, 30)), 102]
        out.append(drift.features(logits, ids, ["negative", "positive"], {101, 102}))
    return out


def test_psi_is_near_zero_in_domain_and_large_on_shifted_traffic():
    rng = np.random.default_rng(0)
    profile = drift.reference(_items(rng, 2000), ["negative", "positive"])
    assert profile["vocabulary"][:3] and len(profile["shares"]["vocabulary"]) == len(profile["vocabulary"]) + 1
    same = drift.Window(profile, 500)
    same.add(_items(rng, 500))
    assert same.scores()["score"] < 0.1
    shifted = drift.Window(profile, 500)
    shifted.add(_items(rng, 500, confident=False, words=range(5000, 5400)))  # other words, less sure
    s = shifted.scores()
    assert s["score"] > drift.DRIFT_THRESHOLD and s["vocabulary"] > 1 and s["confidence"] > drift.DRIFT_THRESHOLD
    assert s["score"] == max(s[p] for p in drift.PARTS)


def test_the_window_keeps_exactly_the_latest_texts():
    rng = np.random.default_rng(1)
    items = _items(rng, 300)
    profile = drift.reference(items, ["negative", "positive"])
    window = drift.Window(profile, 100)
    for start in range(0, 300, 7):
        window.add(items[start : start + 7])
    fresh = drift.histograms(items[-100:], profile)  # what the incremental counts must equal
    assert all(np.array_equal(window.counts[p], fresh[p]) for p in drift.PARTS)


def test_ner_features_average_over_word_pieces():
    logits = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]]))  # CLS, two pieces, SEP
    f = drift.features(logits, [101, 7, 8, 102], ["O", "B-x"], {101, 102})
    assert f["labels"] == ["O", "B-x"] and f["pieces"] == [7, 8] and f["length"] == 4
    assert abs(f["confidence"] - 0.7) < 1e-6


def test_capture_masks_rotates_caps_and_survives_a_restart(tmp_path):
    assert mask("mail jo.doe+x@shop.example.com or +1 (555) 010-2000, order 12345678") == (
        "mail <email> or <phone>, order <number>"
    )
    errors = []
    c = Capture(str(tmp_path / "cap"), max_mb=0.002, file_mb=0.0005, masked=True, on_error=lambda: errors.append(1))
    texts = [f"review number {i} " + "x" * 100 for i in range(40)]
    for i in range(0, 40, 4):
        c.add(texts[i : i + 4])
    files = sorted((tmp_path / "cap").glob("capture-*.jsonl"))
    batch = 4 * len(json.dumps({"text": texts[0]}) + "\n")
    assert len(files) >= 2 and sum(f.stat().st_size for f in files) <= 0.002 * 2**20 + batch
    kept = read_captured(tmp_path / "cap")
    assert kept == texts[-len(kept) :] and len(kept) < 40, "the oldest files went, the newest texts stayed"
    assert errors == []
    # A restart (a new Capture, as a new worker process makes) appends a new file and loses nothing.
    roomy = dict(max_mb=1, file_mb=0.0005, masked=True, on_error=lambda: errors.append(1))
    first = Capture(str(tmp_path / "roomy"), **roomy)
    for i in range(0, 40, 4):
        first.add(texts[i : i + 4])
    Capture(str(tmp_path / "roomy"), **roomy).add(["after a restart"])
    assert read_captured(tmp_path / "roomy") == [*texts, "after a restart"] and errors == []


def test_a_capture_that_cannot_write_never_fails_the_caller(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    errors = []
    c = Capture(str(blocker / "capture"), 1, 1, True, on_error=lambda: errors.append(1))
    c.add(["one"])
    c.add(["two"])
    assert errors == [1, 1]


@needs_promtool
def test_the_alert_rules_are_valid_and_fire_on_their_own_test_series():
    rules = ROOT / "deploy/prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        proc = subprocess.run([PROMTOOL, *args], cwd=rules, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "DomainliftDrift" in (rules / "alerts.yml").read_text()
        and f"> {drift.DRIFT_THRESHOLD}" in (rules / "alerts.yml").read_text()
    )


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    dashboard = json.loads((ROOT / "deploy/grafana/domainlift-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10 and {"domainlift_drift_score", "domainlift_confidence_bucket"} <= {
        name for e in exprs for name in drift_names(e)
    }
    records = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    (tmp_path / "q.yml").write_text(json.dumps({"groups": [{"name": "dashboard", "rules": records}]}))
    proc = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "q.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def drift_names(expr: str) -> set[str]:
    import re

    return set(re.findall(r"\b(domainlift_[a-z_]+|bentoml_[a-z_]+)", expr))


def test_the_export_recipe_asks_for_a_drift_profile():
    from domainlift.config import load_config
    from export.variants import parse

    recipe = parse("onnx-int8-dynamic", load_config(None, ["job=x", "export.drift_samples=50"])).recipe
    assert recipe["drift_profile"] == {"samples": 50, "data": "target unlabeled"}
    assert Path(ROOT / "deploy/grafana/domainlift-dashboard.json").is_file()
