"""Thousands of damaged and crafted rule files, loaded in a process of their own: every outcome is a load or
a one-line refusal, no payload runs, every load ends in well under 10 s and the process stays under 1 GiB."""

import json
import subprocess
import sys

import pytest

from evoplast.export import export_rule

from . import pt2_craft
from .conftest import REPO
from .test_export import _genome

CASES = 2000          # ~10 s on 2 cores beside ~8 s of imports


@pytest.mark.slow
def test_mutants_and_attacks_are_loaded_or_refused_in_one_line_within_time_and_memory(tmp_path):
    cfg, ev, g = _genome()
    genuine = export_rule(ev.spec.model, ev.spec.decode(g), tmp_path / "genuine" / "rule.pt2")
    marker = tmp_path / "marker"
    corpus = pt2_craft.write_corpus(genuine.read_bytes(), tmp_path / "corpus", marker)
    out = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "tests.rule_fuzz", str(genuine), str(tmp_path / "corpus"), "7",
                    str(CASES), str(out)], cwd=REPO, check=True, timeout=300)
    report = json.loads(out.read_text())
    assert not marker.exists()
    assert report["crashes"] == [] and report["multi_line"] == [], report
    assert report["cases"] == CASES and report["slowest_s"] < 10, report
    assert report["peak_rss_mib"] < 1024, report
    names = {path.name: name for name, path in corpus.items()}
    for file, outcome in report["corpus"].items():
        assert outcome["load_rule_refused"], names[file]
        if names[file] not in pt2_craft.DATA_ONLY:
            assert outcome["check_pt2_refused"], names[file]
    # the fuzzer reaches past the zip layer: some mutants load (changed numbers), most are refused
    assert 0 < report["loaded"] < report["refused_by_load_rule"], report
