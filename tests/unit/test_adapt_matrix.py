"""make adapt-matrix on a tiny model: cells, seeds, paired wins, reuse of finished cells, bad arguments."""

import json
import shutil
import signal
import statistics
import subprocess
import sys
import time

import psutil
import pytest
from conftest import ROOT

from benchmarks import adapt_matrix
from domainlift import manifest


def tiny(out, model_dir) -> list[str]:
    """A matrix on the tiny model, 16 examples a split, one epoch."""
    return [
        "--out",
        str(out),
        f"model.path={model_dir}",
        "model.max_length=32",
        "data.max_train_samples=16",
        "data.max_eval_samples=16",
        "train.epochs=1",
    ]


def test_the_adapt_matrix_runs_a_one_pair_slice_and_resumes(tmp_path, tiny_model_dir, capsys):
    argv = [
        "--pairs",
        "books:kitchen",
        "--methods",
        "full,dann,few-shot-200",
        *tiny(tmp_path, tiny_model_dir),
    ]
    assert adapt_matrix.main(argv) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["pairs"] == ["books:kitchen"] and report["methods"] == ["full", "dann", "few-shot-200"]
    assert report["seeds"] == [42]  # the config's train.seed
    (run,) = report["cells"]["books:kitchen"]["dann"]["runs"]
    assert 0 <= report["cells"]["books:kitchen"]["dann"]["score"] == run["target_test"]["accuracy"] <= 1
    assert run["seed"] == 42 and run["reused"] is False
    # each cell says where it trained (a matrix may reuse cells trained on a GPU machine)
    assert run["device"] == "cpu fp32" and report["devices"] == ["cpu fp32"]
    assert "Cells trained on: cpu fp32." in (tmp_path / "results.md").read_text()
    assert report["gain_over_baseline"]["dann"] == report["mean"]["dann"] - report["mean"]["full"]
    assert "| books → kitchen |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "runs/books-to-kitchen-dann-seed42/run").exists(), "the Trainer states are removed"
    few = json.loads((tmp_path / "runs/books-to-kitchen-few-shot-200-seed42/checkpoint/manifest.json").read_text())
    few = few["config"]
    assert few["method"]["name"] == "full" and few["data"]["target_labelled"] == 200
    # Finished cells are reused, not retrained, also when only settings after fine-tuning (export) changed.
    assert adapt_matrix.main([*argv, "export.prune_layers=1"]) == 0
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]["books:kitchen"]
    assert all(run["reused"] for cell in cells.values() for run in cell["runs"])
    assert adapt_matrix.main([*argv, "train.learning_rate=1e-4", "--methods", "full"]) == 0
    assert (
        json.loads((tmp_path / "results.json").read_text())["cells"]["books:kitchen"]["full"]["runs"][0]["reused"]
        is False
    )
    # Several seeds: a cell is their mean, and each run is compared with the baseline's run of the same seed.
    assert adapt_matrix.main([*argv, "--methods", "full,dann", "--seeds", "42,7"]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    dann, full = report["cells"]["books:kitchen"]["dann"], report["cells"]["books:kitchen"]["full"]
    assert report["seeds"] == [7, 42] and [r["seed"] for r in dann["runs"]] == [7, 42]
    assert [r["reused"] for r in dann["runs"]] == [False, True]
    assert dann["score"] == (dann["runs"][0]["score"] + dann["runs"][1]["score"]) / 2
    wins = sum(d["score"] > f["score"] for d, f in zip(dann["runs"], full["runs"]))
    assert report["runs_above_baseline"]["dann"] == wins
    # The spread: each seed's mean over pairs, and the standard deviation of the paired gains.
    assert report["seed_means"]["dann"] == {"7": dann["runs"][0]["score"], "42": dann["runs"][1]["score"]}
    gains = [d["score"] - f["score"] for d, f in zip(dann["runs"], full["runs"])]
    assert report["paired_gain_sd"]["dann"] == pytest.approx(statistics.stdev(gains))
    assert (
        f"{100 * report['gain_over_baseline']['dann']:+.2f} ± {100 * statistics.stdev(gains):.2f}"
        in (tmp_path / "results.md").read_text()
    )
    assert f"| {wins} of 2 |" in (tmp_path / "results.md").read_text()
    # Reused also when a setting of a part the method does not run changed (dann's weight for source-only).
    assert adapt_matrix.main([*argv, "--methods", "full,dann", "method.dann.weight=0.5"]) == 0
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]["books:kitchen"]
    assert cells["full"]["runs"][0]["reused"] is True and cells["dann"]["runs"][0]["reused"] is False
    assert adapt_matrix.main([*argv, "--seeds", "42,x"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert adapt_matrix.main(["--pairs", "books:books"]) == 2
    assert "two different domains" in capsys.readouterr().err


def test_the_crossner_matrix_shares_one_conll_pretraining_across_domains(tmp_path, tiny_model_dir):
    common = [
        "--suite",
        "crossner",
        "--out",
        str(tmp_path),
        f"model.path={tiny_model_dir}",
        "model.max_length=32",
        "data.max_train_samples=200",  # all of politics' and science's 200 sentences, 200 of CoNLL's 15k
        "data.max_eval_samples=16",
        "train.epochs=1",
        "pretrain.epochs=1",
    ]
    assert adapt_matrix.main(["--pairs", "politics,science", "--methods", "direct,pretrain", *common]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["metric"] == "f1" and report["baseline"] == "direct"
    assert report["pairs"] == ["conll2003:politics", "conll2003:science"]
    for pair in report["pairs"]:
        for column in ("direct", "pretrain"):
            cell = report["cells"][pair][column]
            assert 0 <= cell["score"] == cell["runs"][0]["target_test"]["f1"] <= 1
    configs = {
        c: json.loads((tmp_path / f"runs/conll2003-to-politics-{c}-seed42/checkpoint/manifest.json").read_text())[
            "config"
        ]
        for c in ("direct", "pretrain")
    }
    assert configs["direct"]["pretrain"]["data"] is None
    assert configs["pretrain"]["pretrain"]["data"] == "data/crossner/conll2003"
    cache = list((tmp_path / "runs/pretrain-cache").iterdir())
    assert len(cache) == 1, "one CoNLL pre-training serves both domains"
    assert manifest.verify(cache[0])["kind"] == "pretrained-encoder"
    assert adapt_matrix.main(["--pairs", "law", *common]) == 2


def test_a_self_train_column_is_taught_by_its_base_columns_cell(tmp_path, tiny_model_dir):
    argv = [
        "--pairs",
        "books:kitchen",
        "--methods",
        "self-train",
        *tiny(tmp_path, tiny_model_dir),
    ]
    assert adapt_matrix.main(argv) == 0
    teacher = tmp_path / "runs/books-to-kitchen-full-seed42/checkpoint"
    assert (teacher / "metrics.json").is_file(), "the source-only cell ran first, as the teacher"
    student = manifest.read(tmp_path / "runs/books-to-kitchen-self-train-seed42/checkpoint")["config"]
    assert student["method"]["self_train"]["teacher"] == str(teacher)
    assert student["data"]["unlabeled"] == ["data/amazon-reviews/unlabeled/kitchen.jsonl"], "the target's pool"
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["methods"] == ["self-train"] and report["gain_over_baseline"] == {}  # no baseline column asked
    assert adapt_matrix.main(argv) == 0
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]["books:kitchen"]
    assert cells["self-train"]["runs"][0]["reused"] is True


def test_cells_that_share_a_teacher_or_a_cached_phase_run_in_one_unit():
    def configs(suite, pairs, columns, seeds):
        base = adapt_matrix.SUITES[suite]["config"]
        return {
            (f"{s}:{t}", c, seed): adapt_matrix.cell_config(suite, base, adapt_matrix.Path("out"), s, t, c, seed, [])
            for seed in seeds
            for s, t in pairs
            for c in columns
        }

    amazon = configs(
        "amazon",
        [("books", "kitchen"), ("dvd", "kitchen"), ("books", "dvd")],
        ["full", "self-train", "dapt", "dapt+self-train", "udalm"],
        [42, 43],
    )
    units = adapt_matrix.units(amazon)
    assert sorted(map(len, units)) == [2] * 6 + [3] * 2 + [6] * 2 and sum(map(len, units)) == len(amazon)
    # a student with its teacher; one DAPT of kitchen per seed for every cell that starts from it
    assert [("books:kitchen", "full", 42), ("books:kitchen", "self-train", 42)] in units
    kitchen = [(p, c, 42) for p in ("books:kitchen", "dvd:kitchen") for c in ("dapt", "dapt+self-train", "udalm")]
    assert [cell for unit in units for cell in unit if cell in kitchen] == kitchen  # the configs' order
    assert sorted(kitchen) in [sorted(u) for u in units]
    ner = configs("crossner", [("conll2003", d) for d in adapt_matrix.NER_DOMAINS], adapt_matrix.NER_SETTINGS, [42])
    units = adapt_matrix.units(ner)
    # direct and pretrain+dapt cells stand alone; one CoNLL pre-training serves the three `pretrain` cells
    assert sorted(map(len, units)) == [1] * 6 + [3]
    assert [(f"conll2003:{d}", "pretrain", 42) for d in adapt_matrix.NER_DOMAINS] in units


def test_the_adapt_matrix_trains_cells_side_by_side_with_jobs(tmp_path, tiny_model_dir, capsys):
    argv = [
        "--pairs",
        "books:kitchen,dvd:electronics",
        "--methods",
        "full",
        "--jobs",
        "2",
        *tiny(tmp_path, tiny_model_dir),
    ]
    # One unit fails at run time (its cell's checkpoint holds metrics but no manifest: not a finished artifact); the
    # other trains beside it and is kept, and the failure is reported once both have ended.
    broken = tmp_path / "runs/dvd-to-electronics-full-seed42/checkpoint"
    broken.mkdir(parents=True)
    (broken / "metrics.json").write_text("{}")
    assert adapt_matrix.main(argv) == 2
    err = capsys.readouterr().err
    assert "dvd:electronics full:" in err and "not a finished domainlift artifact" in err
    assert (tmp_path / "runs/books-to-kitchen-full-seed42/checkpoint/metrics.json").is_file()
    shutil.rmtree(broken.parent)
    assert adapt_matrix.main(argv) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    for pair, reused in (("books:kitchen", True), ("dvd:electronics", False)):
        (run,) = report["cells"][pair]["full"]["runs"]
        assert run["reused"] is reused and 0 <= run["score"] <= 1
        metrics = json.loads((adapt_matrix.Path(run["checkpoint"]) / "metrics.json").read_text())
        assert run["score"] == metrics["target_test"]["accuracy"]
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["books-to-kitchen-full-seed42.log", "dvd-to-electronics-full-seed42.log"]
    for log in logs:  # each unit logs to its own file, the failed one too
        assert "target test accuracy = " in (tmp_path / "logs" / log).read_text()
    assert adapt_matrix.main([*argv, "--jobs", "0"]) == 2
    assert "--jobs 0: use 1 or more processes" in capsys.readouterr().err


def test_jobs_workers_stop_when_the_matrix_process_is_killed(tmp_path, tiny_model_dir):
    argv = ["--pairs", "books:kitchen,dvd:electronics", "--methods", "full", "--jobs", "2"]
    main = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.adapt_matrix", *argv, *tiny(tmp_path, tiny_model_dir)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers = []
    try:
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "logs").glob("*.log"))) < 2:  # both workers have started a unit
            assert main.poll() is None and time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
        workers += psutil.Process(main.pid).children(recursive=True)
        main.send_signal(signal.SIGTERM)
        main.wait(30)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, "a killed matrix leaves no worker training on as an orphan"
    finally:  # nothing left running, whatever failed
        for p in [*workers, main]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
