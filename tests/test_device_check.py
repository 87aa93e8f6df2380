"""``mondeq device-check``: the same code as on a lent GPU, on the CPU at tiny sizes; and its
test-suite runner, on tiny test files."""
from __future__ import annotations

import json

import pytest

from mondeq.cli import device_check
from mondeq.cli.main import main as mondeq_main


def test_quick_cpu_check_writes_a_consistent_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    status = mondeq_main(["device-check", "--device", "cpu", "--quick", "--no-tests",
                          "--out", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    assert report["elapsed_s"] <= report["budget_s"] + 15  # capped (one cell may overrun)
    cells = {(r["model"], r["mode"]) for r in report["steps"]}
    assert cells == {(k, m) for k in ("fc", "conv", "multitier") for m in ("eager", "compiled", "bf16")}
    first = report["steps"][0]
    assert (first["model"], first["mode"]) == ("fc", "eager") and first["median_ms"] > 0
    for r in report["steps"]:
        assert "median_ms" in r or r["error"].startswith("skipped: out of time"), r
    for r in report["epochs"]:
        if "error" in r:
            continue
        assert r["steps_per_epoch"] == -(-50_000 // r["batch"])
        assert r["epoch_s"] == pytest.approx(r["timed_s"] * r["steps_per_epoch"] / r["timed_steps"], rel=1e-2)
        assert r["hours_40_epochs"] == pytest.approx(40 * r["epoch_s"] / 3600, rel=1e-2, abs=1e-3)
    printed = capsys.readouterr().out
    assert "fc" in printed and "eager" in printed and str(out) in printed


def test_pytest_runner_reports_pass_failure_and_timeout(tmp_path):
    if device_check._tests_dir() is None:
        pytest.skip("not a source checkout")
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
    (tmp_path / "test_bad.py").write_text("def test_bad():\n    assert False\n")
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_slow():\n    time.sleep(60)\n")
    common = ["-p", "no:randomly", "--rootdir", str(tmp_path), "-c", "/dev/null"]
    ok = device_check.run_pytest([*common, str(tmp_path / "test_ok.py")], timeout=60)
    assert ok["status"] == "passed" and "1 passed" in ok["summary"]
    bad = device_check.run_pytest([*common, str(tmp_path / "test_bad.py")], timeout=60)
    assert bad["status"].startswith("failed") and "1 failed" in bad["summary"]
    slow = device_check.run_pytest([*common, str(tmp_path / "test_slow.py")], timeout=8)
    assert slow["status"].startswith("timed out")
