"""``mondeq pretrained``: the models that ship with the package, and what was recorded of each.

    mondeq pretrained              one line each: name, description, clean and certified accuracy
    mondeq pretrained NAME         its description, the command that trained it, its training,
                                   the certificate its figures were recorded with, and the figures
    mondeq pretrained NAME --json  its manifest as JSON (the per-image verdicts left out)
    mondeq pretrained NAME --verify [--device D]
                                   re-certify the test images whose verdicts the manifest holds
                                   (the first 500; fewer for conv models) with
                                   mondeq.certify's defaults, on this machine, and compare them
                                   with the recorded ones

The same registry as :func:`mondeq.pretrained`; a name works wherever a command takes a run
(``mondeq certify mnist-fc``). Only ``--verify`` loads torch and the weights.
"""
from __future__ import annotations

import argparse
import json

from ..pretrained.registry import PretrainedEntry, entries, entry
from .options import HelpFormatter, data_root_arg, default_device, device_arg


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The pretrained models that ship with mondeq, with the figures "
                                            "recorded on their whole test set.", formatter_class=HelpFormatter)
    p.add_argument("name", nargs="?", default=None, help="one model's details (default: list them all)")
    p.add_argument("--json", action="store_true", help="print the model's manifest as JSON (needs NAME)")
    p.add_argument("--verify", action="store_true",
                   help="re-certify the test images the manifest holds verdicts for and compare (needs NAME)")
    p.add_argument("--data-root", type=data_root_arg, default=None,
                   help="folder holding the dataset (default: $MONDEQ_DATA, the checkout's data/, then "
                        "~/.cache/mondeq)")
    p.add_argument("--device", type=device_arg, default=default_device(), help="where --verify certifies")
    return p


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.name is None:
        if args.json or args.verify:
            parser().error(f"--{'json' if args.json else 'verify'} is about one model: give its NAME "
                           "(mondeq pretrained lists them)")
        for item in entries().values():
            print(item.summary())
        return 0
    if args.json and args.verify:
        parser().error("--json prints the manifest, --verify re-certifies: choose one")
    item = entry(args.name)  # an unknown name: UnknownPretrainedError, one line
    if args.verify:
        same = verify(item, data_root=args.data_root, device=args.device)
        return 0 if same else 1
    if args.json:
        print(json.dumps({k: v for k, v in item.to_json().items() if k != "verdicts"}, indent=1))
    else:
        print(details(item))
    return 0


def details(item: PretrainedEntry) -> str:
    """The lines ``mondeq pretrained NAME`` prints."""
    f = item.figures
    lines = [f"{item.name}: {item.description}",
             f"  trained by    {item.command}",
             f"  training      {item.training.get('epochs')} epochs"
             + (f", {item.training['train_wall_time_s']:.0f} s ({item.training.get('hardware', 'machine not recorded')})"
                if isinstance(item.training.get("train_wall_time_s"), (int, float)) else ""),
             f"  dataset       {item.dataset} ({f['test_images']:,} test images)",
             f"  clean         {100 * f['clean']:.2f} %"]
    lines += [f"  certified     {100 * v:.2f} % at ε={e} (ℓ2, pixels)" for e, v in f.get("certified", {}).items()]
    lines.append(f"  certificate   {item.certificate()} (mondeq.certify's defaults give it)")
    if "pgd" in f:
        p = f["pgd"]
        lines.append(f"  PGD           {p['counterexamples']} counterexamples in {p['checked']:,} certified (image, ε) "
                     f"pairs, {p['images']:,} images, {p['steps']} steps × {p['restarts']}")
    lines.append(f"  weights       {item.weights} (SHA-256 {item.sha256[:16]}…, checked on load)")
    return "\n".join(lines)


def verify(item: PretrainedEntry, *, data_root=None, device: str = "cpu") -> bool:
    """Re-certify the manifest's verdict images with :func:`mondeq.certify`'s defaults on
    ``device``, print what differs, and say whether every verdict is the recorded one."""
    import time

    from ..data import load_dataset
    from ..pretrained import pretrained
    from ..pretrained.verdicts import decode, verdicts_of
    from ..robustness.certification import certify

    recorded = item.verdicts
    n, epsilons = recorded["images"], recorded["epsilons"]
    x, y = load_dataset(item.dataset, data_root, train=False)
    model = pretrained(item.name, map_location=device)
    start = time.perf_counter()
    cert = certify(model, x[:n].to(device), y[:n].to(device), epsilons=epsilons, batch_size=n)
    got = verdicts_of(cert, epsilons)
    rows = [("correct", got["correct"], recorded["correct"])]
    rows += [(f"certified at ε={e:g}", got["certified"][f"{e:g}"], recorded["certified"][f"{e:g}"]) for e in epsilons]
    print(f"{item.name}: the first {n} test images re-certified on {device} in {time.perf_counter() - start:.1f} s "
          f"({cert.describe()})")
    same = True
    for label, mine, theirs in rows:
        a, b = decode(mine, n), decode(theirs, n)
        differ = int((a != b).sum())
        same &= differ == 0
        print(f"  {label:<22} {int(a.sum()):>4} of {n} (recorded {int(b.sum())})"
              + ("  same images" if differ == 0 else f"  {differ} images differ"))
    print("verdicts identical to the recorded ones" if same else
          "error: verdicts differ from the recorded ones (another torch build or device can move a "
          "radius that lies within rounding of ε; report it if many differ)")
    return same


main = run

if __name__ == "__main__":  # python -m mondeq.cli.pretrained: the command's one-line errors
    import sys

    from .main import run_command
    sys.exit(run_command("pretrained"))
