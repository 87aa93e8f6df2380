"""The pretrained models the package ships: each loads as recorded (checksum, eval mode, its
normalisation), re-certifies its first test images to exactly the recorded per-image verdicts,
and is accepted by name wherever a program takes a run folder."""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path

import pytest
import torch

import mondeq
from mondeq.data import load_dataset
from mondeq.errors import PretrainedChecksumError, UnknownPretrainedError
from mondeq.pretrained import registry
from mondeq.pretrained.verdicts import decode, encode, verdicts_of

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(registry.entries())
DATA_ROOTS = (None, ROOT.parent / "shared" / "data")  # the data-root rule, then the developers' copy


def test_a_bitmask_round_trips() -> None:
    bits = torch.tensor([True, False, True, True] + [False] * 60 + [True])
    assert encode(bits) == format(1 | 4 | 8 | 1 << 64, "x")
    assert torch.equal(decode(encode(bits), len(bits)), bits)
    with pytest.raises(ValueError):
        decode("ff", 4)


def test_the_package_ships_models_with_their_commands_and_figures() -> None:
    listed = mondeq.pretrained()
    assert [e.name for e in listed] == NAMES and "mnist-fc" in NAMES
    for item in listed:
        assert item.command and item.training["epochs"] >= 1
        assert 0 < item.figures["clean"] <= 1 and item.figures["test_images"] == 10000
        assert item.figures["pgd"]["counterexamples"] == 0
        assert item.name in repr(item) and "certified" in item.summary()
        assert (registry.WEIGHTS / item.weights).stat().st_size < 4_000_000


def test_weights_are_package_data() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    data = cfg["options.package_data"]["mondeq"].split()
    assert "pretrained/weights/*.pt" in data and "pretrained/weights/*.json" in data


@pytest.mark.parametrize("name", NAMES)
def test_loads_ready_in_eval_mode_with_its_recorded_checksum(name: str) -> None:
    model = mondeq.pretrained(name)
    item = model.pretrained_entry
    assert registry.sha256(registry.WEIGHTS / item.weights) == item.sha256
    assert not model.training and model.normalization is not None
    assert next(model.head.parameters()).dtype == torch.float32


def _test_images(dataset: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    for root in DATA_ROOTS:
        try:
            x, y = load_dataset(dataset, root, train=False)
            return x[:n], y[:n]
        except FileNotFoundError:
            continue
    pytest.skip(f"{dataset}'s test split is not on this machine")


@pytest.mark.parametrize("name", NAMES)
def test_mondeq_certify_with_no_settings_gives_the_recorded_verdicts(name: str) -> None:
    """One answer: mondeq.certify on a pretrained model, with its defaults, chooses the certificate
    the figures were recorded with (bound, multipliers, tol, dtype) and reproduces the recorded
    per-image verdicts bit for bit; a change of the defaults fails here until the model is
    re-recorded."""
    model = mondeq.pretrained(name)
    item = model.pretrained_entry
    recorded = item.verdicts
    x, y = _test_images(item.dataset, recorded["images"])
    cert = mondeq.certify(model, x, y, epsilons=recorded["epsilons"], batch_size=len(x))
    assert (cert.bound, cert.multipliers, cert.tol, cert.dtype) == tuple(
        item.certify[k] for k in ("bound", "multipliers", "tol", "dtype"))
    got = verdicts_of(cert, recorded["epsilons"])
    assert got["correct"] == recorded["correct"]
    assert got["certified"] == recorded["certified"]
    assert decode(recorded["certified"][f"{recorded['epsilons'][0]:g}"], len(x)).any()


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPretrainedError, match="mnist-fc"):
        mondeq.pretrained("mnist-fc-typo")


def test_the_device_is_chosen_by_name_and_a_missing_one_is_refused_by_name() -> None:
    """``device=`` (as for any PyTorch model) or ``map_location=`` places the model; a CUDA device
    on a machine without one is a one-line error that says the file is fine; a name that is not
    a string, or two different places, are refused."""
    from mondeq.errors import DeviceUnavailableError, InvalidSettingError

    for kwargs in ({}, {"device": "cpu"}, {"device": torch.device("cpu")}, {"map_location": "cpu"}):
        model = mondeq.pretrained("mnist-fc", **kwargs)
        assert {p.device.type for p in model.parameters()} == {"cpu"}
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="was not read and may be fine"):
            mondeq.pretrained("mnist-fc", device="cuda")
    with pytest.raises(InvalidSettingError, match="name two places"):
        mondeq.pretrained("mnist-fc", device="cuda", map_location="cpu")
    with pytest.raises(InvalidSettingError, match="named by a string.*mnist-fc"):
        mondeq.pretrained(3)


def test_damaged_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    item = registry.entry("mnist-fc")
    for suffix in (".json", ".pt"):
        shutil.copy(registry.WEIGHTS / f"mnist-fc{suffix}", tmp_path / f"mnist-fc{suffix}")
    blob = bytearray((tmp_path / item.weights).read_bytes())
    blob[len(blob) // 2] ^= 1
    (tmp_path / item.weights).write_bytes(bytes(blob))
    monkeypatch.setattr(registry, "WEIGHTS", tmp_path)
    with pytest.raises(PretrainedChecksumError, match=item.sha256):
        mondeq.pretrained("mnist-fc")


def test_a_run_argument_takes_a_pretrained_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert registry.resolve_run("mnist-fc") == registry.WEIGHTS / "mnist-fc.pt"
    (tmp_path / "mnist-fc").mkdir()  # a folder of that name on disk wins over the registry
    assert registry.resolve_run("mnist-fc") == Path("mnist-fc")
    assert registry.resolve_run("runs/mnist-fc") == Path("runs/mnist-fc")
    model = mondeq.load_run(registry.WEIGHTS / "mnist-fc.pt")
    by_name = mondeq.pretrained("mnist-fc")
    for (k, a), (_, b) in zip(model.state_dict().items(), by_name.state_dict().items()):
        assert torch.equal(a, b), k


def test_the_commands_run_argument_takes_a_pretrained_name(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command reads its RUN through checkpoint_file (certify, compare, spectrum)."""
    from mondeq.cli.options import checkpoint_file

    monkeypatch.chdir(tmp_path)
    assert checkpoint_file("mnist-fc") == registry.WEIGHTS / "mnist-fc.pt"
    with pytest.raises(FileNotFoundError, match="no run folder or checkpoint at mnist-fcx.*did you mean .mnist-fc."):
        checkpoint_file("mnist-fcx")



def test_recording_a_run_names_the_certificate_the_rule_chose_and_reproduces_the_shipped_figures(
        tmp_path: Path) -> None:
    """``record`` measures with mondeq.certify's rule ("auto") and writes what it chose into the
    manifest; recording a shipped model's checkpoint again gives its shipped figures and verdicts."""
    from mondeq.pretrained.record import record

    name = "mnist-fc"  # the rule chooses diagonal multipliers here (not the scalar default of old)
    shipped = registry.entry(name)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(registry.WEIGHTS / shipped.weights, run / "checkpoint.pt")
    epsilons = [float(e) for e in shipped.figures["certified"]]
    item = record(run, "again", description="d", command="c", training={"epochs": 1}, epsilons=epsilons,
                  verdict_images=20, attack_images=4, looseness_images=0, folder=tmp_path, log=lambda _: None)
    assert (item.certify["bound"], item.certify["multipliers"]) == ("joint", "diagonal") == (
        shipped.certify["bound"], shipped.certify["multipliers"])
    assert item.figures["clean"] == shipped.figures["clean"]
    assert item.figures["certified"] == shipped.figures["certified"]
    for eps in item.verdicts["epsilons"]:
        assert torch.equal(decode(item.verdicts["certified"][f"{eps:g}"], 20),
                           decode(shipped.verdicts["certified"][f"{eps:g}"], shipped.verdicts["images"])[:20])
    assert registry.entries(tmp_path)["again"].certify == item.certify  # the manifest on disk says so too
