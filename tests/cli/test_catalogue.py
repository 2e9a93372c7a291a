"""The reliability catalogue: every bad input or fault a user (or an attacker) can cause, one case each,
run through ``gkt``'s ``main()`` on tiny data. Each case checks the exit code, the message, that no
traceback is printed, and that nothing left behind looks like a valid result (a failed run directory
is removed, or kept with a ``FAILED`` mark and ``"status": "failed"`` in its ``config.json``).

Cases that end in a correct result rather than an error (a zeroed prediction store, a damaged zoo build,
an interrupted multi-teacher cache entry, ...) are the test functions after the table."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import fmnist_dir, write_model
from safetensors.torch import load_file, save_file

from gkt.cli import main
from gkt.cli.rundir import FAILED_MARK
from gkt.data.fmnist import DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_FILES
from gkt.models.checkpoint import checkpoint_paths


@dataclass(frozen=True)
class World:
    """Tiny data, two checkpoints and one finished 1-epoch transfer run, shared by every case."""

    root: Path
    data: Path
    student: str
    teacher: str
    run: Path  # a finished transfer run directory (config.json, state.pt, student checkpoint)

    def transfer(self, *extra: str) -> list[str]:
        return ["transfer", "--student", self.student, "--teacher", self.teacher, "--data-dir", str(self.data),
                "--fraction", "1.0", "--batch-size", "16", "--epochs", "1", "--threads", "1", *extra]

    def analyze(self, *models: str, extra: tuple[str, ...] = ()) -> list[str]:
        return ["analyze", "--models", *(models or (self.student, self.teacher)), "--data-dir", str(self.data),
                "--no-random-baseline", "--no-semantic", "--no-figures", "--threads", "1", *extra]

    def copy_model(self, spec: str, to: Path) -> tuple[Path, Path]:
        """A copy of a ``file:`` checkpoint under ``to``: ``(weights, sidecar)``."""
        src_weights, src_sidecar = checkpoint_paths(spec.removeprefix("file:"))
        weights, sidecar = checkpoint_paths(to / "model")
        to.mkdir(parents=True, exist_ok=True)
        shutil.copy(src_weights, weights)
        shutil.copy(src_sidecar, sidecar)
        return weights, sidecar

    def copy_run(self, to: Path) -> Path:
        shutil.copytree(self.run, to)
        return to


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("catalogue")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GKT_HOME", str(root / "home"))
        data = fmnist_dir(root / "fmnist", 160)  # zoo recipes train with batches of 128
        student, teacher = write_model(root / "student", 1), write_model(root / "teacher", 2, hidden=8)
        w = World(root, data, student, teacher, root / "none")
        assert main([*w.transfer(), "--out", str(root / "runs")]) == 0
        (run,) = (root / "runs").iterdir()
    return World(root, data, student, teacher, run)


def _sidecar_edit(edit: Callable[[dict], object]) -> Callable[[World, Path], list[str]]:
    def prepare(w: World, tmp: Path) -> list[str]:
        _, sidecar = w.copy_model(w.teacher, tmp / "m")
        sidecar.write_text(json.dumps(edit(json.loads(sidecar.read_text()))))
        return w.analyze(w.student, f"file:{tmp / 'm' / 'model'}")
    return prepare


def _with_preprocess(**changes: object) -> Callable[[dict], dict]:
    return lambda meta: {**meta, "preprocess": {**meta["preprocess"], **changes}}


def _sidecar_bytes(content: bytes) -> Callable[[World, Path], list[str]]:
    def prepare(w: World, tmp: Path) -> list[str]:
        _, sidecar = w.copy_model(w.teacher, tmp / "m")
        sidecar.write_bytes(content)
        return w.analyze(w.student, f"file:{tmp / 'm' / 'model'}")
    return prepare


def _flipped_weights(w: World, tmp: Path) -> list[str]:
    weights, _ = w.copy_model(w.teacher, tmp / "m")
    raw = bytearray(weights.read_bytes())
    for i in range(len(raw) - 64, len(raw)):  # the last 64 bytes of tensor data
        raw[i] ^= 0xFF
    weights.write_bytes(bytes(raw))
    return w.analyze(w.student, f"file:{tmp / 'm' / 'model'}")


def _resume_with_state(write: Callable[[Path, dict], None], digest: bool = False) -> Callable[[World, Path], list[str]]:
    """A copied run whose state.pt ``write`` changes; without its ``digest`` (as a run of an older gkt) the
    state's own checks are what catch it."""
    def prepare(w: World, tmp: Path) -> list[str]:
        run = w.copy_run(tmp / "run")
        state = torch.load(run / "state.pt", weights_only=True)
        write(run / "state.pt", state)
        if not digest:
            (run / "state.sha256.json").unlink()
        return ["transfer", "--resume", str(run), "--data-dir", str(w.data), "--epochs", "2", "--threads", "1"]
    return prepare


def _changed_in_place(path: Path, state: dict) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)  # same size, still a readable zip: torch does not notice
    path.write_bytes(bytes(raw))


def _wrong_shapes(path: Path, state: dict) -> None:
    state["student"] = {k: torch.zeros(3) for k in state["student"]}
    torch.save(state, path)


def _pickled(path: Path, state: dict) -> None:
    import argparse

    torch.save({**state, "payload": argparse.Namespace(evil=True)}, path)  # weights_only refuses it


def _run_config(text: str) -> Callable[[World, Path], list[str]]:
    def prepare(w: World, tmp: Path) -> list[str]:
        run = w.copy_run(tmp / "run")
        (run / "config.json").write_text(text)
        return ["transfer", "--resume", str(run), "--data-dir", str(w.data), "--threads", "1"]
    return prepare


def _resume_digits_run_with_data_dir(w: World, tmp: Path) -> list[str]:
    """A run whose data is digits, resumed with --data-dir (which its data would not read)."""
    run = w.copy_run(tmp / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": "digits"}))
    return ["transfer", "--resume", str(run), "--data-dir", str(w.data), "--threads", "1"]


def _class_map(mapping: dict | None) -> Callable[[World, Path], list[str]]:
    def prepare(w: World, tmp: Path) -> list[str]:
        path = tmp / "map.json"
        if mapping is not None:
            path.write_text(json.dumps(mapping))
        return w.transfer("--class-map", str(path))
    return prepare


def _official_fmnist_with_one_label_changed(w: World, tmp: Path) -> list[str]:
    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip("the Debian Fashion-MNIST package is not installed")
    data = tmp / "fmnist"
    data.mkdir()
    for spec in FASHION_MNIST_FILES.values():
        os.symlink(DEBIAN_FASHION_MNIST_DIR / spec.name, data / spec.name)
    labels = data / FASHION_MNIST_FILES[("test", "labels")].name
    payload = bytearray(gzip.decompress(labels.read_bytes()))
    payload[8 + 123] = (payload[8 + 123] + 1) % 10  # one label of the 10k test labels
    labels.unlink()
    labels.write_bytes(gzip.compress(bytes(payload)))
    return w.analyze(extra=("--data-dir", str(data)))


def _truncated_zoo_weights(w: World, tmp: Path) -> list[str]:
    zoo = tmp / "zoo"
    common = ["--zoo-dir", str(zoo), "--data-dir", str(w.data), "--threads", "1", "--out", str(tmp / "build")]
    assert main(["zoo", "build", "--only", "linear", "--epochs", "1", "--no-check", *common]) == 0
    (weights,) = zoo.glob("linear-*.safetensors")
    weights.write_bytes(weights.read_bytes()[:-100])
    return w.analyze(w.student, "zoo:linear", extra=("--zoo-dir", str(zoo)))


def _unwritable_home(w: World, tmp: Path, mp: pytest.MonkeyPatch) -> None:
    (tmp / "a-file").write_text("not a directory")
    mp.setenv("GKT_HOME", str(tmp / "a-file" / "home"))


def _full_home(w: World, tmp: Path, mp: pytest.MonkeyPatch) -> None:
    home = tmp / "home"
    mp.setenv("GKT_HOME", str(home))
    real = shutil.disk_usage
    mp.setattr("gkt.cli.rundir.shutil.disk_usage",
               lambda p: real(p)._replace(free=2**20) if str(p).startswith(str(tmp)) and "out" not in str(p)
               else real(p))


def _disk_fills_during_run(w: World, tmp: Path, mp: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 128 vs 64; "
                           "basic_ios::clear: iostream error")
    mp.setattr("gkt.transfer.trainer.torch.save", full)


def _pickle_weights(w: World, tmp: Path) -> list[str]:
    torch.save({"x": torch.zeros(1), "payload": os.system}, tmp / "evil.pt")
    return w.analyze(w.student, f"timm:test_resnet@{tmp / 'evil.pt'}")


def _truncated_idx(w: World, tmp: Path) -> list[str]:
    data = shutil.copytree(w.data, tmp / "fmnist")
    images = data / FASHION_MNIST_FILES[("test", "images")].name
    images.write_bytes(images.read_bytes()[:200])
    return w.analyze(extra=("--data-dir", str(data)))


def _without_data_dir(argv: list[str]) -> list[str]:
    """``argv`` less its ``--data-dir DIR`` (for data that does not read it: giving it is an error)."""
    i = argv.index("--data-dir")
    return argv[:i] + argv[i + 2:]


@dataclass(frozen=True)
class Case:
    """One catalogue row: ``prepare(world, tmp) -> argv`` (``--out`` is added), the expected exit code
    and a regular expression the error message must match; ``patch(world, tmp, monkeypatch)`` sets up a fault."""

    name: str
    prepare: Callable[[World, Path], list[str]]
    code: int
    message: str
    patch: Callable[[World, Path, pytest.MonkeyPatch], None] | None = field(default=None)


CASES = [
    # silent wrong results, now errors
    Case("checkpoint: 64 flipped bytes in the weights", _flipped_weights, 2,
         r"weights do not match the SHA-256 recorded in model\.json"),
    Case("sidecar: an empty weights_sha256 (no check)", _sidecar_edit(lambda meta: {**meta, "weights_sha256": ""}),
         2, r"weights_sha256 '' is no SHA-256 prefix"),
    Case("sidecar: std = 0", _sidecar_edit(_with_preprocess(std=[0.0])), 2, "std must be positive"),
    Case("sidecar: negative std", _sidecar_edit(_with_preprocess(std=[-0.3])), 2, "std must be positive"),
    Case("sidecar: std of the wrong length", _sidecar_edit(_with_preprocess(std=[0.3, 0.3])), 2,
         r"mean/std need 1 values"),
    Case("spec: ?std=[0]", lambda w, t: w.analyze(w.student, "timm:test_resnet?std=[0]"), 2,
         r"std=\[0\] must be a list of positive numbers"),
    Case("Fashion-MNIST: one label changed in an official file", _official_fmnist_with_one_label_changed, 2,
         r"t10k-labels-idx1-ubyte\.gz: it has the shape of the official Fashion-MNIST .* but not its content"),
    Case("--class-map: missing file (class names already match)", _class_map(None), 2,
         r"class map .*map\.json: no such file"),
    Case("--class-map: two-to-one map (class names already match)",
         _class_map({"T-shirt/top": "Shirt", "Shirt": "Shirt"}), 2, r"sends model classes \['Shirt'\] to several"),
    Case("--epochs 0", lambda w, t: w.transfer("--epochs", "0"), 2, r"--epochs: input should be greater than or equal to 1"),
    Case("--epochs -1", lambda w, t: w.transfer("--epochs", "-1"), 2, r"--epochs: input should be greater than or equal"),
    Case("--data-dir /typo", lambda w, t: w.transfer("--data-dir", str(t / "typo")), 2,
         r"--data-dir .*typo: no such directory"),
    Case("--data-dir with --data digits", lambda w, t: w.transfer("--data", "digits"), 2,
         r"--data-dir .* names the Fashion-MNIST directory, but this command's data \(digits\) does not read it"),
    Case("--data-dir with --data fmnist:DIR", lambda w, t: w.analyze(extra=("--data", f"fmnist:{w.data}")), 2,
         r"--data-dir .* and the data spec fmnist:.* both name the Fashion-MNIST directory; give it once"),
    Case("--resume a digits run with --data-dir", _resume_digits_run_with_data_dir, 2,
         r"--data-dir .* but this command's data \(digits\) does not read it"),
    Case("--resume RUN --lr 0.5 --method kl", lambda w, t: ["transfer", "--resume", str(w.run), "--lr", "0.5",
                                                            "--method", "kl", "--data-dir", str(w.data)], 2,
         r"you gave --method kl \(the run used kl-dp\); --lr 0\.5 \(the run left it to its default\)"),
    Case("zoo build --fraction 1.5", lambda w, t: ["zoo", "build", "--fraction", "1.5"], 2,
         r"--fraction: input should be less than or equal to 1, got 1\.5"),
    Case("--weight-decay -1", lambda w, t: w.transfer("--weight-decay", "-1"), 2,
         r"--weight-decay: input should be greater than or equal to 0"),
    # tracebacks, now errors
    Case("sidecar: random bytes", _sidecar_bytes(bytes(range(256)) * 4), 2, r"model\.json: not valid JSON"),
    Case("sidecar: a JSON list", _sidecar_bytes(b"[1, 2, 3]"), 2, r"not a gkt checkpoint sidecar \(format 'a JSON list'"),
    Case("sidecar: no arch", _sidecar_edit(lambda meta: {k: v for k, v in meta.items() if k != "arch"}), 2,
         r"the sidecar lacks arch"),
    Case("state.pt: bytes changed in place", _resume_with_state(_changed_in_place, digest=True), 2,
         r"state\.pt: the saved training state fails its checksum"),
    Case("state.pt: truncated", _resume_with_state(lambda p, s: p.write_bytes(p.read_bytes()[:500])), 2,
         r"state\.pt: cannot read the saved training state .* start it again"),
    Case("state.pt: empty", _resume_with_state(lambda p, s: p.write_bytes(b"")), 2,
         r"state\.pt: cannot read the saved training state"),
    Case("state.pt: wrong shapes", _resume_with_state(_wrong_shapes), 2,
         r"the saved training state does not fit this model and method"),
    Case("state.pt: a pickle", _resume_with_state(_pickled), 2, r"state\.pt: cannot read the saved training state"),
    Case("run config.json: not JSON", _run_config("{not json"), 2, r"its config\.json is damaged"),
    Case("run config.json: keys missing", _run_config('{"command": "transfer"}'), 2, r"its config\.json is damaged"),
    Case("spec: ?img_size=abc", lambda w, t: w.analyze(w.student, "timm:test_vit?img_size=abc"), 2,
         r"model spec 'timm:test_vit\?img_size=abc': img_size='abc' must be an integer from 1 to 4096"),
    Case("analyze: a model given twice", lambda w, t: w.analyze(w.student, w.teacher, w.student), 2,
         r"--models names file:\S+ more than once; give each model once"),
    Case("spec: ?mean=1", lambda w, t: w.analyze(w.student, "timm:test_resnet?mean=1"), 2,
         r"model spec 'timm:test_resnet\?mean=1': mean=1 must be a list of numbers"),
    Case("--lr -1", lambda w, t: w.transfer("--lr", "-1"), 2, r"--lr: input should be greater than 0"),
    Case("--batch-size 0", lambda w, t: w.transfer("--batch-size", "0"), 2, r"--batch-size: input should be greater"),
    Case("--batch-size -1", lambda w, t: w.transfer("--batch-size", "-1"), 2, r"--batch-size: input should be greater"),
    Case("--threads -1", lambda w, t: w.transfer("--threads", "-1"), 2, r"--threads: input should be greater"),
    Case("--device tpu", lambda w, t: w.transfer("--device", "tpu"), 2, r"--device tpu: .*use auto, cpu, cuda"),
    Case("GKT_HOME not writable", lambda w, t: w.transfer(), 2, r"\$GKT_HOME .*home: .*a-file is a file, not a directory",
         _unwritable_home),
    Case("GKT_HOME on a full disk", lambda w, t: w.transfer(), 2, r"\$GKT_HOME .*: only 1 MB free", _full_home),
    Case("disk full during a run", lambda w, t: w.transfer(), 2, r"writing a file failed .*the disk is probably full",
         _disk_fills_during_run),
    Case("zoo weights truncated", _truncated_zoo_weights, 2,
         r"zoo model 'linear': .* `gkt zoo build --only linear` rebuilds it"),
    Case("zoo: with no name", lambda w, t: w.analyze(w.student, "zoo:"), 2,
         r"model spec 'zoo:' names no model: write it as zoo:NAME"),
    # handled well before, kept
    Case("unknown model source", lambda w, t: w.analyze(w.student, "foo:bar"), 2, r"unknown model source 'foo'"),
    Case("file: checkpoint missing", lambda w, t: w.analyze(w.student, f"file:{t / 'nope'}"), 2,
         r"sidecar not found"),
    Case("unknown zoo model", lambda w, t: w.analyze(w.student, "zoo:nope"), 2, r"no zoo model 'nope'; the zoo has"),
    Case("unknown data spec", lambda w, t: w.transfer("--data", "nope"), 2, r"unknown data spec 'nope'"),
    Case("a pickle as timm weights", _pickle_weights, 2, r"evil\.pt: cannot read weights"),
    Case("transfer without a teacher", lambda w, t: ["transfer", "--student", w.student], 2,
         r"give --student SPEC and --teacher SPEC"),
    Case("several teachers without --multi", lambda w, t: w.transfer("--teacher", w.student), 2,
         r"2 teachers: choose how to combine them with --multi"),
    Case("a teacher given twice", lambda w, t: w.transfer("--teacher", w.teacher, "--multi", "soup"), 2,
         r"is given twice"),
    Case("folder: data without train/", lambda w, t: _without_data_dir(w.transfer("--data", f"folder:{t}")), 2,
         r"expected an ImageNet-layout folder"),
    Case("--models zoo with nothing built", lambda w, t: w.analyze("zoo", extra=("--zoo-dir", str(t / "zoo"))), 2,
         r"`--models zoo` found no built zoo models"),
    Case("truncated IDX file", _truncated_idx, 2, r"t10k-images-idx3-ubyte\.gz: cannot read .*corrupt or truncated"),
    Case("--config of another verb", lambda w, t: (t / "c.yaml").write_text("command: study\n") and
         ["transfer", "--config", str(t / "c.yaml")], 2, r"is a `gkt study` config, not `gkt transfer`"),
    Case("--resume a directory that is no run", lambda w, t: ["transfer", "--resume", str(t)], 2,
         r"not a run directory"),
    Case("unknown transfer method", lambda w, t: w.transfer("--method", "dpkl"), 2, r"unknown transfer method 'dpkl'"),
]



# Issue 29 (hardening): resource bombs, non-finite models, environment variables, odd paths.


def _edited_model(w: World, tmp: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> str:
    """A copy of the teacher whose weights ``edit`` changes in place (saved as a valid checkpoint)."""
    from gkt.models import load_checkpoint, save_checkpoint

    model = load_checkpoint(w.teacher.removeprefix("file:"))
    with torch.no_grad():
        edit(dict(model.net.named_parameters()))
    save_checkpoint(model, tmp / "edited" / "model")
    return f"file:{tmp / 'edited' / 'model'}"


def _set_first(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda params: next(iter(params.values())).view(-1)[0].fill_(value)


def _huge(params: dict[str, torch.Tensor]) -> None:
    for p in params.values():  # finite weights whose products overflow float32: infinite logits
        p.fill_(3e38)


def _as(role: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[World, Path], list[str]]:
    def prepare(w: World, tmp: Path) -> list[str]:
        spec = _edited_model(w, tmp, edit)
        if role == "analyze":
            return w.analyze(w.student, spec)
        argv = w.transfer()
        argv[argv.index(f"--{role}") + 1] = spec
        return argv
    return prepare


CASES += [
    # non-finite models
    Case("NaN in a model's weights (analyze)", _as("analyze", _set_first(float("nan"))), 2,
         r"model file:\S+edited/model: its weights hold 1 NaN or infinite value\(s\) \(in body\.1\.weight\)"),
    Case("+inf in a teacher's weights", _as("teacher", _set_first(float("inf"))), 2,
         r"model file:\S+edited/model: its weights hold 1 NaN or infinite"),
    Case("NaN in a student's weights", _as("student", _set_first(float("nan"))), 2,
         r"model file:\S+edited/model: its weights hold 1 NaN or infinite"),
    Case("a model whose outputs are infinite (analyze)", _as("analyze", _huge), 2,
         r"model file:\S+edited/model: \d+ of its \d+ outputs on the first batch are NaN or infinite"),
    Case("a teacher whose outputs are infinite", _as("teacher", _huge), 2,
         r"model file:\S+edited/model: \d+ of its \d+ outputs on the first batch are NaN or infinite"),
]


BILLION_LAUGHS = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi"))


def _config_text(text: str) -> Callable[[World, Path], list[str]]:
    def prepare(w: World, tmp: Path) -> list[str]:
        (tmp / "c.yaml").write_text(text)
        return w.analyze(extra=("--config", str(tmp / "c.yaml")))
    return prepare


def _class_map_bytes(content: bytes) -> Callable[[World, Path], list[str]]:
    def prepare(w: World, tmp: Path) -> list[str]:
        (tmp / "map.json").write_bytes(content)
        return w.transfer("--class-map", str(tmp / "map.json"))
    return prepare


def _little_memory(w: World, tmp: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setattr("gkt.core.limits.available_memory", lambda device=None: 8 * 2**30)


CASES += [
    # resource bombs
    Case("class range fmnist[0-99999999]", lambda w, t: w.analyze(extra=("--data", "fmnist[0-99999999]")), 2,
         r"class range '0-99999999': 100,000,000 classes, more than the 100,000 gkt accepts; "
         r".*check the range"),
    Case("YAML aliases (billion laughs) in an accepted --config key",
         _config_text('a: &a ["lol", "lol"]\n' + BILLION_LAUGHS + "models: [*i]\n"), 2,
         r"--config \S+c\.yaml: line 2: YAML aliases \(\*name\) are not accepted"),
    Case("?img_size=4096: a batch larger than the memory left", lambda w, t: w.analyze(
        w.student, "timm:test_resnet?img_size=4096"), 2,
         r"a batch of 40 inputs of 1×4096×4096 needs about 40\.0 GB of memory but 8\.0 GB is free on cpu; "
         r"lower --batch-size to 8 or less", _little_memory),
    # odd text inputs
    Case("--config a directory", lambda w, t: w.analyze(extra=("--config", str(t))), 2,
         r"--config \S+: is a directory; give a file"),
    Case("--class-map a directory", lambda w, t: w.transfer("--class-map", str(t)), 2,
         r"class map \S+: is a directory; give a file"),
    Case("--class-map binary garbage", _class_map_bytes(bytes(range(128, 256)) * 4), 2,
         r"class map \S+map\.json: not UTF-8 text \(byte 0 is 0x80\); give a text file"),
]


def _env(name: str, value: str) -> Callable[[World, Path, pytest.MonkeyPatch], None]:
    return lambda w, t, mp: mp.setenv(name, value.replace("TMP", str(t)))


CASES += [
    # environment variables, parsed as their flags are
    Case("GKT_BAD_IMAGES=bogus", lambda w, t: w.transfer(), 2,
         r"\$GKT_BAD_IMAGES='bogus': bad-image policy 'bogus': use one of fail, skip; it takes what "
         r"--bad-images takes \(fail or skip\): fix it, or unset it", _env("GKT_BAD_IMAGES", "bogus")),
    Case("GKT_IMG_SIZE=abc", lambda w, t: w.analyze(), 2,
         r"\$GKT_IMG_SIZE='abc': invalid int value: 'abc'; it takes what --img-size takes",
         _env("GKT_IMG_SIZE", "abc")),
    Case("GKT_IMG_SIZE=5000", lambda w, t: w.analyze(), 2,
         r"\$GKT_IMG_SIZE='5000': 5000 px: give an input size from 1 to 4096", _env("GKT_IMG_SIZE", "5000")),
    Case("GKT_DATA=/nope", lambda w, t: _without_data_dir(w.analyze()), 2,
         r"\$GKT_DATA='\S+nope': no such directory .*it takes what --data-dir takes",
         _env("GKT_DATA", "TMP/nope")),
    Case("GKT_MIN_FREE_MB=-5", lambda w, t: w.transfer(), 2,
         r"\$GKT_MIN_FREE_MB='-5': -5 is no number of megabytes from 0 up", _env("GKT_MIN_FREE_MB", "-5")),
]


def _study_jobs(jobs: object) -> Callable[[World, Path], list[str]]:
    """A study run directory whose jobs.json holds ``jobs`` (and an empty results store)."""
    def prepare(w: World, tmp: Path) -> list[str]:
        run = tmp / "study"
        run.mkdir()
        (run / "jobs.json").write_text(json.dumps(jobs))
        (run / "results.sqlite").write_bytes(b"")
        return ["study", "--resume", str(run), "--threads", "1"]
    return prepare


def _hf_dir(path: Path) -> Path:
    """A tiny saved transformers ViT for Fashion-MNIST (a 10-class head)."""
    import transformers
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from gkt.data.fmnist import FASHION_MNIST_CLASSES as names

    transformers.utils.logging.disable_progress_bar()  # saving shows one on stderr
    config = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=8, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=8, id2label=dict(enumerate(names)))
    ViTForImageClassification(config).save_pretrained(path)
    processor = ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5])
    processor.save_pretrained(path)
    return path


def _hf_dir_with_labels(labels: int) -> Callable[[World, Path], list[str]]:
    """A saved transformers ViT with a 10-class head whose config.json lists ``labels`` labels."""
    def prepare(w: World, tmp: Path) -> list[str]:
        from gkt.data.fmnist import FASHION_MNIST_CLASSES as names

        _hf_dir(tmp / "hf")
        saved = json.loads((tmp / "hf" / "config.json").read_text())
        saved["id2label"] = {str(i): names[i] for i in range(labels)}
        saved["label2id"] = {names[i]: i for i in range(labels)}
        (tmp / "hf" / "config.json").write_text(json.dumps(saved))
        return w.analyze(w.student, f"hf:{tmp / 'hf'}")
    return prepare


JOB = {"student": "zoo:linear", "teacher": "zoo:mlp", "method": "kl-dp", "seed": 0, "data": "fmnist"}

CASES += [
    # other crashes
    Case("--seed 99999999999999999999", lambda w, t: w.transfer("--seed", "99999999999999999999"), 2,
         r"--seed: input should be less than or equal to 4294967295, got 99999999999999999999"),
    Case("study --seeds -1", lambda w, t: ["study", "--students", w.student, "--seeds", "-1"], 2,
         r"--seeds: input should be greater than or equal to 0, got -1"),
    Case("timm ViT at a size its patch size does not divide",
         lambda w, t: w.analyze(w.student, "timm:test_vit?img_size=30"), 2,
         r"timm:test_vit cannot take 30x30 px input \(Input height \(30\) should be divisible by patch size"),
    Case("hf: config with 5 labels for a 10-class head", _hf_dir_with_labels(5), 2,
         r"hf:\S+: its weights do not fit the network its config\.json describes \(id2label lists 5 labels "
         r"but the head classifier\.weight has 10 outputs\)"),
    Case("study jobs.json: a job without a teacher",
         _study_jobs([JOB, {k: v for k, v in JOB.items() if k != "teacher"}]), 2,
         r"jobs\.json: job 2 of 2 lacks a valid teacher; the file is damaged"),
    Case("study jobs.json: a seed that is text", _study_jobs([{**JOB, "seed": "0"}]), 2,
         r"jobs\.json: job 1 of 1 lacks a valid seed"),
]


def _export_to(to: Callable[[Path], str]) -> Callable[[World, Path], list[str]]:
    return lambda w, t: ["export", f"hf:{_hf_dir(t / 'hf')}", "--to", to(t)]


def _read_only_export(w: World, tmp: Path, mp: pytest.MonkeyPatch) -> None:
    import errno

    def read_only(model: object, out: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(out / "config.json"))
    mp.setitem(__import__("gkt.models.export").models.export.WRITERS, "transformers", (read_only, None))


def _long_path(w: World, tmp: Path) -> list[str]:
    return w.analyze(w.student, "file:" + "/".join([str(tmp), *["d" * 200] * 25, "model"]))


def _a_file(t: Path) -> str:
    (t / "existing").write_text("mine")
    return str(t / "existing")


CASES += [
    # odd paths and files
    Case("a 5000-character model path", _long_path, 2,
         r"\(50\d\d characters\): the path is too long \(file systems take names of up to 255 bytes"),
    Case("export --to an existing file", _export_to(_a_file), 2,
         r"--to \S+existing: exists and is not a directory; gkt never overwrites"),
    Case("export --to under /proc", _export_to(lambda t: "/proc/gkt-export"), 2,
         r"--to /proc/gkt-export: cannot write the export there \(.*\); choose a writable --to"),
    Case("export --to on a read-only disk", _export_to(lambda t: str(t / "export")), 2,
         r"--to \S+export: cannot write the export there \(\S+config\.json: Read-only file system\); "
         r"choose a writable --to", _read_only_export),
    Case("report ''", lambda w, t: ["report", ""], 2,
         r"RUN_DIR is empty; give a directory a gkt command wrote"),
    Case("report on a data folder", lambda w, t: ["report", str(w.data)], 2,
         r"RUN_DIR \S+fmnist: not a gkt run directory \(no config\.json written by gkt\)"),
    Case("report on a file", lambda w, t: ["report", str(w.run / "config.json")], 2,
         r"RUN_DIR \S+config\.json: not a directory"),
]


def _nan_state(path: Path, state: dict) -> None:
    first = next(iter(state["student"]))
    state["student"][first] = torch.full_like(state["student"][first], float("nan"))
    torch.save(state, path)


def _deep_sidecar(w: World, tmp: Path) -> list[str]:
    _, sidecar = w.copy_model(w.teacher, tmp / "m")
    sidecar.write_text("[" * 100_000 + "]" * 100_000)
    return w.analyze(w.student, f"file:{tmp / 'm' / 'model'}")


CASES += [
    # found beside the cases: the same families
    Case("--lr inf", lambda w, t: w.transfer("--lr", "inf"), 2,
         r"--lr: input should be a finite number, got inf"),
    Case("--temperature 1e400", lambda w, t: w.transfer("--temperature", "1e400"), 2,
         r"--temperature: input should be a finite number"),
    Case("--epochs 99999999999999999999", lambda w, t: w.transfer("--epochs", "99999999999999999999"), 2,
         r"--epochs: input should be less than or equal to 2147483647"),
    Case("--threads 99999999999", lambda w, t: w.transfer("--threads", "99999999999"), 2,
         r"--threads: input should be less than or equal to 1024"),
    Case("--config nested 100000 deep", _config_text("models: " + "[" * 100_000 + "]" * 100_000 + "\n"), 2,
         r"--config \S+c\.yaml: nested too deeply to parse"),
    Case("sidecar nested 100000 deep", _deep_sidecar, 2,
         r"model\.json: not valid JSON \(nested too deeply to parse\)"),
    Case("state.pt: NaN weights", _resume_with_state(_nan_state), 2,
         r"state\.pt: the saved training state holds NaN or infinite values \(in state\.student\.\S+\); "
         r"the run cannot be resumed: start it again"),
]


def _fifo(t: Path) -> str:
    os.mkfifo(t / "pipe.yaml")
    return str(t / "pipe.yaml")


CASES += [
    Case("--zoo-dir ''", lambda w, t: w.transfer("--zoo-dir", ""), 2,
         r"--zoo-dir: an empty value names nothing; give one, or leave the option out"),
    Case("--data-dir ''", lambda w, t: w.analyze(extra=("--data-dir", "")), 2,
         r"--data-dir: an empty value names nothing"),
    Case("--class-map ' '", lambda w, t: w.transfer("--class-map", " "), 2,
         r"--class-map: an empty value names nothing"),
    Case("--config a named pipe nobody writes to", lambda w, t: w.analyze(extra=("--config", _fifo(t))), 2,
         r"--config \S+pipe\.yaml: a pipe nothing was written to"),
]


CASES += [
    Case("study: a grid of 480,008 jobs", lambda w, t: ["study", "--students", w.student, w.teacher,
                                                        "--seeds", *map(str, range(60001))], 2,
         r"a grid of 2 student x 2 teacher x 2 method x 60001 seed: 480,008 jobs, more than the 100,000 gkt "
         r"accepts; give fewer values"),
]


def _finetune(w: World, output: str) -> list[str]:
    return ["kdep", "finetune", "--model", w.student, "--data", "fmnist", "--data-dir", str(w.data),
            "--epochs", "1", "--threads", "1", "--output", output]


CASES += [
    Case("kdep finetune --output onto an existing model",
         lambda w, t: _finetune(w, w.teacher.removeprefix("file:")), 2,
         r"--output \S+teacher: a model is there already \(teacher\.json\); gkt never overwrites one"),
    Case("kdep finetune --output under /proc", lambda w, t: _finetune(w, "/proc/gkt/model"), 2,
         r"--output /proc/gkt/model: cannot write there \(.*\); give a path in a writable folder"),
    Case("export zoo:NAME --zoo-dir DIR reads DIR",
         lambda w, t: ["export", "zoo:linear", "--zoo-dir", str(t / "zoo")], 2,
         r"zoo model 'linear' is not built in \S+/zoo;"),
]


def assert_nothing_valid_left(out: Path) -> None:
    """Every run directory under ``out`` of a failed command is gone or visibly marked failed."""
    for run in out.iterdir() if out.exists() else ():
        config = json.loads((run / "config.json").read_text())
        assert config["status"] in ("failed", "interrupted") and (run / FAILED_MARK).is_file(), run
        final = run / "final.json"
        assert not final.exists() or json.loads(final.read_text())["status"] == "failed"
        assert not (run / "student.safetensors").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_catalogue(case: Case, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture) -> None:
    argv = case.prepare(world, tmp_path)
    if case.patch is not None:
        case.patch(world, tmp_path, monkeypatch)
    out = tmp_path / "out"
    code = main([*argv, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == case.code, captured.err
    assert re.search(case.message, captured.err), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(captured.err.strip().splitlines()) <= 2  # the error (and where its run directory was kept)
    assert_nothing_valid_left(out)


# Cases that must end in the correct result (exit 0), not an error.


def test_zeroed_predictions_in_the_store_are_recomputed(world: World, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    argv = [*world.analyze(), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    stored = sorted((Path(os.environ["GKT_HOME"]) / "predictions").glob("*.safetensors"))
    assert len(stored) == 2
    from safetensors import safe_open

    with safe_open(str(stored[0]), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(stored[0]))
    tensors["predicted"] = torch.zeros_like(tensors["predicted"])
    save_file(tensors, str(stored[0]), metadata=meta)  # a valid file, with the old metadata, wrong contents
    assert main(argv) == 0
    assert "stored predictions fail their checksum" in caplog.text
    first, second = sorted((tmp_path / "out").iterdir())
    assert (first / "overview.csv").read_text() == (second / "overview.csv").read_text()  # the same, correct result
    assert load_file(str(stored[0]))["predicted"].any()  # the damaged file was replaced


def test_fashion_mnist_check_is_done_once_and_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip("the Debian Fashion-MNIST package is not installed")
    import hashlib

    from gkt.data import fmnist

    data = tmp_path / "fmnist"
    shutil.copytree(DEBIAN_FASHION_MNIST_DIR, data)
    calls, sha256 = [], hashlib.sha256
    monkeypatch.setattr(fmnist.hashlib, "sha256", lambda payload: calls.append(len(payload)) or sha256(payload))
    assert len(fmnist.load_fashion_mnist("test", data)) == 10000
    assert len(calls) == 2  # images and labels, checked once
    fmnist.load_fashion_mnist("test", data)
    assert len(calls) == 2  # remembered (path, size, mtime)
    labels = data / FASHION_MNIST_FILES[("test", "labels")].name
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    fmnist.load_fashion_mnist("test", data)
    assert len(calls) == 3  # a touched file is checked again


def test_damaged_zoo_build_is_trained_again(world: World, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["zoo", "build", "--only", "linear", "--epochs", "1", "--no-check", "--zoo-dir", str(tmp_path / "zoo"),
            "--data-dir", str(world.data), "--threads", "1", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    (weights,) = (tmp_path / "zoo").glob("linear-*.safetensors")
    weights.write_bytes(weights.read_bytes()[:-100])
    assert main(argv) == 0
    assert "(1 trained, 0 cached)" in capsys.readouterr().out
    assert main(argv) == 0
    assert "(0 trained, 1 cached)" in capsys.readouterr().out
    assert main([*world.analyze(world.student, "zoo:linear"), "--zoo-dir", str(tmp_path / "zoo"),
                 "--out", str(tmp_path / "out")]) == 0


def test_smoke_build_is_what_zoo_list_and_models_zoo_see(world: World, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """The README's smoke build (fewer epochs, a fraction of the data) is listed, analysed and loaded alike."""
    zoo = ["--zoo-dir", str(tmp_path / "zoo"), "--data-dir", str(world.data), "--threads", "1",
           "--out", str(tmp_path / "out")]
    assert main(["zoo", "build", "--only", "mlp", "cnn", "--epochs", "1", "--fraction", "0.8", "--no-check", *zoo]) == 0
    capsys.readouterr()
    assert main(["zoo", "list", *zoo]) == 0
    listed = capsys.readouterr().out
    assert "mlp" in listed and "cnn" in listed and "2 models" in listed
    assert main(["analyze", "--models", "zoo", "--no-random-baseline", "--no-semantic", "--no-figures", *zoo]) == 0
    assert "analysing 2 models" in capsys.readouterr().out


def test_multi_teacher_entry_killed_before_final_json_recovers(world: World, tmp_path: Path) -> None:
    third = write_model(tmp_path / "third", 3, hidden=12)
    argv = [*world.transfer("--teacher", third, "--multi", "soup"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    finals = sorted((Path(os.environ["GKT_HOME"]) / "transfer-runs").glob("*/final.json"))
    assert finals and all((f.parent / "student.safetensors").is_file() for f in finals)
    finals[0].unlink()  # killed after the student was saved, before final.json
    assert main(argv) == 0
    assert finals[0].is_file()


def test_unexpected_error_is_one_line_and_a_traceback_log(world: World, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("gkt.experiments.transfer_run.run_transfer", broken)  # what gkt transfer calls
    out = tmp_path / "out"
    assert main([*world.transfer(), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("gkt: error: unexpected ZeroDivisionError: a bug (a bug in gkt: the traceback is in ")
    log = Path(re.search(r"the traceback is in (\S+);", err).group(1))
    assert "Traceback (most recent call last)" in log.read_text() and "ZeroDivisionError: a bug" in log.read_text()
    assert_nothing_valid_left(out)


def test_interrupted_run_keeps_its_state_marked_and_resumes(world: World, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gkt.transfer.trainer import TransferTrainer

    train_epoch = TransferTrainer.train_epoch

    def interrupt_second(self: TransferTrainer) -> dict:
        if self.epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(self)

    monkeypatch.setattr(TransferTrainer, "train_epoch", interrupt_second)
    out = tmp_path / "out"
    assert main([*world.transfer("--epochs", "2"), "--out", str(out)]) == 130
    (run,) = out.iterdir()
    assert_nothing_valid_left(out)
    assert json.loads((run / "config.json").read_text())["status"] == "interrupted" and (run / "state.pt").is_file()
    monkeypatch.setattr(TransferTrainer, "train_epoch", train_epoch)
    assert main(["transfer", "--resume", str(run), "--data-dir", str(world.data), "--out", str(out)]) == 0
    resumed = next(r for r in out.iterdir() if r != run)
    assert json.loads((resumed / "config.json").read_text())["status"] == "ok"
    assert json.loads((resumed / "final.json").read_text())["status"] == "ok"


def test_two_models_without_disagreements_are_analysed(world: World, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Zero flips (two copies of one model): the summary says so instead of failing on undefined stats."""
    twin = f"file:{world.copy_model(world.student, tmp_path / 'twin')[0].with_suffix('')}"
    argv = [*world.analyze(world.student, twin)[:-3], "--threads", "1", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "- no flips: no model gets any sample right that another gets wrong" in out and "nan" not in out


def test_a_damaged_cached_state_names_the_folder_to_delete(world: World, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    third = write_model(tmp_path / "third", 3, hidden=12)
    argv = [*world.transfer("--teacher", third, "--multi", "soup"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    entry = min((Path(os.environ["GKT_HOME"]) / "transfer-runs").glob("*/final.json")).parent
    (entry / "final.json").unlink()  # an unfinished cached run ...
    (entry / "state.pt").write_bytes((entry / "state.pt").read_bytes()[:300])  # ... whose state is damaged
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"delete {entry} (gkt's cache of this unfinished transfer) and run the command again" in err
    assert "start it again" not in err and "Traceback" not in err
