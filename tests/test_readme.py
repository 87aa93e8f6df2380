"""The README starts with exactly two commands, and CI runs the second one verbatim."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def leading_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_starts_with_main_job_and_test_commands():
    main_job, tests = leading_commands()
    assert main_job.count("\n") == 0 and tests.count("\n") == 0
    assert "experiments/train.py" in main_job and "pytest" in tests
    first_block = (ROOT / "README.md").read_text().index("```")
    assert (ROOT / "README.md").read_text()[:first_block].count("\n") <= 2  # only the title before


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert leading_commands()[1] in ci_lines


def test_the_trained_model_example_runs_as_written(tmp_path, monkeypatch):
    """The README's "Use a trained model" block runs unchanged on a run of the main job (a short
    one), including its own check that no attack lands inside a certified radius."""
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Use a trained model"):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert 'load_run("runs/mnist_fc")' in code
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), "--train-limit", "2000",
                          "--test-limit", "100", "--epochs", "1", "--out", str(tmp_path / "runs" / "mnist_fc"),
                          "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
