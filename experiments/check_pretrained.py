"""Re-check the shipped pretrained models on their whole test sets, or record a run as one.

Check (the benchmark): every registered model (or those named) is loaded as users load it
(``mondeq.pretrained(name)``, checksum verified), certified on its dataset's whole test split with
the settings its figures were recorded with, and the measured clean and certified accuracy are
compared with the recorded ones; the time each takes is printed (``mondeq.certify`` on the
10,000 MNIST images). ``--attack-limit N`` also runs PGD on the first N images and counts
counterexamples inside certified radii (there must be none). Exits 1 if any figure differs.

Record (for maintainers): ``--record RUN --name NAME`` measures the run folder's model and writes
``mondeq/pretrained/weights/NAME.pt`` and ``NAME.json`` (mondeq.pretrained.record.record); the
command and wall time come from the reproduce command's ``ROW.json`` beside the run when there is
one, else from ``--command`` and ``--wall-time``.

Examples::

    python experiments/check_pretrained.py                       # all models, whole test sets
    python experiments/check_pretrained.py mnist-certified-fc-1.58 --attack-limit 1000
    python experiments/check_pretrained.py --record runs/reproduce/mnist-fc --name mnist-fc \\
        --description "fully connected, 87 hidden (the paper's MNIST FC row)" --epsilons 0.1 0.3
"""
import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from mondeq.cli.main import run_program
from mondeq.pretrained import entries
from mondeq.pretrained.record import DEFAULT_SETTINGS, check, record


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="models to check (default: every registered one)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding mnist/, fashion-mnist/ (default: the data-root rule)")
    p.add_argument("--attack-limit", type=int, default=0, help="PGD on the first N test images")
    g = p.add_argument_group("recording a run")
    g.add_argument("--record", type=Path, metavar="RUN", help="record this run folder")
    g.add_argument("--name", help="the recorded model's name")
    g.add_argument("--description", default="", help="one line on the model")
    g.add_argument("--command", default=None, help="the command that trained it")
    g.add_argument("--wall-time", type=float, default=None, help="training wall time, s")
    g.add_argument("--hardware", default="", help="where it was trained")
    g.add_argument("--commit", default="", help="the source commit it was trained at")
    g.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.3, 1.58])
    g.add_argument("--multipliers", default=DEFAULT_SETTINGS["multipliers"],
                   choices=("scalar", "diagonal", "auto"))
    g.add_argument("--verdict-images", type=int, default=500,
                   help="first test images whose verdicts the test re-derives")
    g.add_argument("--record-attack-images", type=int, default=1000)
    g.add_argument("--looseness-images", type=int, default=100)
    return p.parse_args(argv)


def training_info(args) -> tuple[str, dict]:
    """The command and training figures of the run being recorded."""
    run = args.record
    results = json.loads((run / "results.json").read_text())
    summary_file = run.parent / f"{run.name}.json"  # the reproduce command's row summary
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    train_cmd = summary.get("command", "")
    command = args.command or (f"python experiments/reproduce.py --row {summary['row']}"
                               + (" -- " + shlex.join(summary["forwarded"]) if summary.get("forwarded") else "")
                               if summary else "")
    if not command:
        sys.exit("error: give --command (no reproduce summary beside the run)")
    hw = summary.get("hardware", {})
    info = {"epochs": results["final"]["epoch"], "train_command": train_cmd,
            "train_wall_time_s": results.get("train_wall_time_s"),
            "wall_time_s": args.wall_time or summary.get("wall_time_s"),
            "hardware": args.hardware or f"{hw.get('name', '?')}, {hw.get('threads', '?')} thread(s)",
            "commit": args.commit, "clean_at_training_tol": results["final"]["test_accuracy"]}
    return command, info


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.record is not None:
        if not args.name:
            sys.exit("error: --record needs --name")
        command, info = training_info(args)
        record(args.record, args.name, description=args.description, command=command, training=info,
               epsilons=args.epsilons, settings={"multipliers": args.multipliers},
               verdict_images=args.verdict_images, attack_images=args.record_attack_images,
               looseness_images=args.looseness_images, data_root=args.data_root, device=args.device)
        return 0
    names = args.names or list(entries())
    failed = []
    for name in names:
        print(f"{name}:", flush=True)
        result = check(name, data_root=args.data_root, device=args.device, attack_images=args.attack_limit)
        verdict = "same as recorded" if result["same"] else f"DIFFERENT (recorded {result['recorded']})"
        print(f"  {verdict}; {result['seconds']:.1f} s", flush=True)
        if not result["same"] or result["counterexamples"]:
            failed.append(name)
    if failed:
        print(f"figures differ or counterexamples found: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":  # one-line errors, as every program
    sys.exit(run_program(main, prog="check_pretrained.py"))
