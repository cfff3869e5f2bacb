"""Nothing read as data runs code: fit JSONs, row filters and weights files are data.

Each attack is the one a shared artefact makes possible: a pickle that, when run, writes a
marker file. The marker never appears, and the command refuses in one sentence (exit 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from kdlab.cli import main as kdlab_main
from kdlab.errors import ConfigError
from kdlab.laws.published import paper_fit_document
from kdlab.rundb import RunStore
from tests.conftest import FAST, compose_run, run_cli, write_sharded_checkpoint
from tests.test_report import build_study


class _WritesMarker:
    """Unpickling this calls Path.touch(marker): code run by reading a data file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_marker_pickle(path: Path, marker: Path, torch_format: bool = False) -> Path:
    """A plain pickle, or (``torch_format``) a torch.save file that looks like weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if torch_format:
        import torch

        torch.save({"state_dict": {}, "shape": _WritesMarker(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_WritesMarker(marker)))
    return path


@pytest.mark.parametrize("torch_format", [False, True])
def test_the_payload_runs_code_when_unpickled(tmp_path: Path, torch_format: bool) -> None:
    """The attack is real: loading the file as pickles load writes the marker."""
    import torch

    marker = tmp_path / "marker"
    path = write_marker_pickle(tmp_path / "p.pkl", marker, torch_format)
    with contextlib.suppress(RuntimeError):  # a plain pickle has no magic number...
        torch.load(path, weights_only=False)
    assert marker.exists()  # ...but its code ran while torch looked for one


def test_report_does_not_run_a_fit_jsons_filter(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    build_study(url, students=False)
    marker = tmp_path / "marker"
    payload = write_marker_pickle(tmp_path / "payload.pkl", marker)
    fit = tmp_path / "shared_fit.json"
    doc = paper_fit_document()["supervised"]
    fit.write_text(json.dumps({**doc, "fit_where": f"@pd.read_pickle('{payload}')"}))
    code = kdlab_main(
        ["report", "--db", url, "--supervised-fit", str(fit), "--out", str(tmp_path / "r")]
        + ["--plan-budgets", "0", "--map-points", "0"]
    )
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 2
    assert "fit_where" in err and str(fit) in err
    assert len(err.strip().splitlines()[-1].split(". ")) == 1  # one sentence
    assert not (tmp_path / "r" / "index.html").exists()


@pytest.mark.parametrize("option", ["--fit-where", "--holdout"])
def test_fit_does_not_run_a_filter(tmp_path: Path, capsys, option: str) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    build_study(url, students=False)
    marker = tmp_path / "marker"
    payload = write_marker_pickle(tmp_path / "payload.pkl", marker)
    code = kdlab_main(
        ["fit", "supervised", "--db", url, option, f"@pd.read_pickle('{payload}')"]
        + ["--out", str(tmp_path / "f.json")]
    )
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 2 and option in err
    assert not (tmp_path / "f.json").exists()


# ------------------------------------------------------------------ weights files

TEACHER = ["model=nano_L2", "data.tokens=32768", "data.tokens_per_param=null"]
STUDENT = ["objective=distill", "model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]
BY_SETTINGS = ["teacher.model=nano_L2", "teacher.tokens=32768"]
TINY = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]


def rows(root: Path) -> list[dict]:
    db = root / "runs" / "kdlab.db"
    return RunStore(f"sqlite:///{db}", create=False).find() if db.exists() else []


def refused(train, *overrides: str) -> str:
    """The run's refusal: a ConfigError of one line (kdlab-train prints it and exits 2)."""
    with pytest.raises(ConfigError) as caught:
        train(*overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def teacher(train, tmp_path: Path) -> dict:
    return train(*TEACHER)


@pytest.mark.parametrize("torch_format", [False, True])
def test_a_teachers_weights_file_that_is_a_pickle_is_refused(
    teacher, train, tmp_path: Path, torch_format: bool
) -> None:
    """Refused by the row's hash, and where whoever swapped the file also rewrote the
    row's hash (a shared database), by loading it as data."""
    marker = tmp_path / "marker"
    weights = Path(teacher["run_dir"]) / "model.pt"
    write_marker_pickle(weights, marker, torch_format)
    assert "are not the file the run saved" in refused(train, *STUDENT, *BY_SETTINGS)
    store = RunStore(f"sqlite:///{tmp_path / 'runs' / 'kdlab.db'}")
    store.update(teacher["key"], weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    message = refused(train, *STUDENT, *BY_SETTINGS)
    assert not marker.exists()
    assert message.startswith(f"teacher weights {weights} ")
    assert [r["key"] for r in rows(tmp_path)] == [teacher["key"]]  # no student row


def test_a_teacher_checkpoint_that_is_a_pickle_is_refused(train, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    checkpoint = write_marker_pickle(tmp_path / "shared" / "teacher.ckpt", marker, True)
    message = refused(train, *STUDENT, f"teacher.checkpoint={checkpoint}")
    assert not marker.exists()
    assert message == (
        f"teacher weights {checkpoint} holds more than tensors and plain values, and kdlab "
        "never runs code from a weights file, so it is refused"
    )
    assert rows(tmp_path) == []


def test_a_last_checkpoint_that_is_a_plain_pickle_is_set_aside_unread(
    train, tmp_path: Path, capsys
) -> None:
    """A plain pickle is not a torch archive: it reads as a damaged checkpoint, is set
    aside without being unpickled, and the run trains from the start."""
    from kdlab.run_plan import plan_run

    plan = plan_run(compose_run(tmp_path, *TINY))
    marker = tmp_path / "marker"
    write_marker_pickle((plan.run_dir / "checkpoints" / "last.ckpt"), marker)
    row = train(*TINY)
    assert not marker.exists()
    assert row["status"] == "done"
    assert "does not load" in capsys.readouterr().err
    [aside] = (plan.run_dir / "checkpoints" / ".kdlab-aside").glob("last.ckpt.corrupt-*")
    assert aside.read_bytes()[:2] == b"\x80\x04"  # the pickle, kept as it was


def test_a_last_checkpoint_in_torch_format_with_code_is_refused_by_the_command(
    tmp_path: Path,
) -> None:
    """From the command line: exit 2, one sentence, and the marker never written."""
    from kdlab.run_plan import plan_run

    plan = plan_run(compose_run(tmp_path, *TINY))
    marker = tmp_path / "marker"
    write_marker_pickle((plan.run_dir / "checkpoints" / "last.ckpt"), marker, torch_format=True)
    result = run_cli("kdlab.train", f"paths.root_dir={tmp_path}", *FAST, *TINY)
    assert not marker.exists()
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"kdlab-train: error: the run's checkpoint {plan.run_dir / 'checkpoints' / 'last.ckpt'} "
        "holds more than tensors "
        "and plain values, and kdlab never runs code from a weights file, so it is refused"
    )
    assert "Traceback" not in result.stderr
    assert rows(tmp_path) == []


def test_a_sharded_checkpoint_with_code_in_its_index_or_an_item_is_refused_unrun(
    tmp_path: Path,
) -> None:
    """torch reads a sharded (FSDP) checkpoint's index with plain pickle and its items
    that are not tensors with weights_only=False. kdlab reads both as data before a
    resume: code in either is refused in one sentence (exit 2 from the command), never
    run, and the checkpoint stays as evidence."""
    import warnings

    import torch
    from torch.distributed.checkpoint import FileSystemReader

    from kdlab.checkpoints import load_sharded, resume_point
    from kdlab.run_plan import plan_run

    marker = tmp_path / "marker"
    plan = plan_run(compose_run(tmp_path, *TINY))
    in_index = write_sharded_checkpoint(plan.run_dir / "checkpoints" / "last.ckpt", 4)
    write_marker_pickle(in_index / ".metadata", marker)
    result = run_cli("kdlab.train", f"paths.root_dir={tmp_path}", *FAST, *TINY)
    assert not marker.exists()
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"kdlab-train: error: the run's checkpoint {in_index} holds more than tensors and "
        "plain values, and kdlab never runs code from a weights file, so it is refused"
    )
    assert rows(tmp_path) == [] and (in_index / ".metadata").is_file()

    items = {"state_dict": {"model.w": torch.ones(2)}}
    items["optimizer_0"] = {"param_groups": [{"name": _WritesMarker(marker)}]}
    in_item = write_sharded_checkpoint(tmp_path / "other" / "last.ckpt", 4, items=items)
    with pytest.raises(ConfigError, match=f"checkpoint {in_item} holds more than tensors"):
        resume_point([in_item])
    assert not marker.exists() and in_item.is_dir()
    # kdlab's loader refuses it too, were it changed after that check
    template = {"optimizer_0": {"param_groups": [{"name": "hidden"}]}}
    with warnings.catch_warnings():  # one process and no process group, as meant here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        with pytest.raises(ConfigError, match=f"checkpoint {in_item} holds more than tensors"):
            load_sharded(template, in_item)
    assert not marker.exists()

    with contextlib.suppress(AttributeError):  # the payload returns None, not an index
        FileSystemReader(in_index).read_metadata()
    assert marker.exists()  # the attack is real: torch's own reader runs it


def test_a_sharded_checkpoint_that_leads_torch_elsewhere_is_set_aside_and_never_loaded(
    tmp_path: Path, capsys
) -> None:
    """An index torch's loader would fail on, so that it falls back to a rank-local index
    it unpickles whole, or one that points outside the folder: kdlab sets the checkpoint
    aside before a resume, and its own loader refuses it even if asked directly."""
    import warnings

    import torch

    from kdlab.checkpoints import load_sharded, resume_point

    marker = tmp_path / "marker"

    def tampered(name: str, change) -> Path:
        return _with_index_changed(tmp_path / name / "last.ckpt", change)

    def no_storage_meta(index) -> None:
        index.storage_meta = 1  # torch fails on this, then reads __0.metadata

    def outside(index) -> None:
        for info in index.storage_data.values():
            info.relative_path = "../../secret.pt"

    fallback = tampered("fallback", no_storage_meta)
    write_marker_pickle(fallback / "__0.metadata", marker)
    leading_out = tampered("outside", outside)
    (tmp_path / "secret.pt").write_bytes(b"x" * 10_000)
    for checkpoint, reason in (
        (fallback, "its index is not one torch.distributed.checkpoint writes"),
        (leading_out, "its index names '../../secret.pt', not a shard file of its own"),
    ):
        state = {"state_dict": {"model.w": torch.zeros(2)}}
        with warnings.catch_warnings():  # one process and no process group, as meant here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            with pytest.raises(ConfigError, match=f"checkpoint {checkpoint} does not load: "):
                load_sharded(state, checkpoint)
        assert resume_point([checkpoint]) is None and not checkpoint.exists()
        assert reason in capsys.readouterr().err
        assert torch.equal(state["state_dict"]["model.w"], torch.zeros(2))  # nothing read
    assert not marker.exists()


def _with_index_changed(checkpoint: Path, change) -> Path:
    """A sharded checkpoint whose index ``change`` edited."""
    from kdlab.checkpoints import SHARDED_INDEX, _IndexUnpickler

    write_sharded_checkpoint(checkpoint, 4)
    with open(checkpoint / SHARDED_INDEX, "rb") as handle:
        index = _IndexUnpickler(handle).load()
    change(index)
    (checkpoint / SHARDED_INDEX).write_bytes(pickle.dumps(index))
    return checkpoint


def test_a_sharded_checkpoint_reaching_past_its_records_or_folder_is_stopped(
    tmp_path: Path, capsys
) -> None:
    """An index that sets a class's attributes (pickle's BUILD on a class: pathlib's would
    redirect every path of the process) is refused as code; an index that is a pipe (a
    read that never ends), metadata or a whole checkpoint that is a link (another run's),
    and a weight stored as bytes are set aside, each with its reason."""
    import threading

    import torch

    from kdlab.checkpoints import SHARDED_INDEX, SHARDED_METADATA, resume_point, unreadable

    classy = write_sharded_checkpoint(tmp_path / "classy" / "last.ckpt", 4)
    build_on_a_class = b"ctorch\nSize\nN}X\x0c\x00\x00\x00kdlab_markerK\x01s\x86b0"
    index = classy / SHARDED_INDEX
    index.write_bytes(build_on_a_class + index.read_bytes())
    with pytest.raises(ConfigError, match=f"checkpoint {classy} holds more than tensors"):
        resume_point([classy])
    assert not hasattr(torch.Size, "kdlab_marker") and classy.is_dir()
    # an enum member is shared too: redefining how it pickles would break every later save
    from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING

    member = _MEM_FORMAT_ENCODING(0)
    build_on_a_member = (
        b"ctorch.distributed.checkpoint.metadata\n_MEM_FORMAT_ENCODING\nK\x00\x85R"
        b"}X\r\x00\x00\x00__reduce_ex__ctorch\nSize\nsb0"
    )
    shared = write_sharded_checkpoint(tmp_path / "shared" / "last.ckpt", 4)
    index = shared / SHARDED_INDEX
    index.write_bytes(build_on_a_member + index.read_bytes())
    with pytest.raises(ConfigError, match=f"checkpoint {shared} holds more than tensors"):
        resume_point([shared])
    assert "__reduce_ex__" not in vars(member)

    piped = write_sharded_checkpoint(tmp_path / "piped" / "last.ckpt", 4)
    (piped / SHARDED_INDEX).unlink()
    os.mkfifo(piped / SHARDED_INDEX)
    answer = []
    reader = threading.Thread(target=lambda: answer.append(unreadable(piped)), daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert answer == [".metadata is not a plain file"]

    elsewhere = write_sharded_checkpoint(tmp_path / "other-run" / "last.ckpt", 9)
    linked_metadata = write_sharded_checkpoint(tmp_path / "linked-meta" / "last.ckpt", 4)
    (linked_metadata / SHARDED_METADATA).unlink()
    (linked_metadata / SHARDED_METADATA).symlink_to(elsewhere / SHARDED_METADATA)
    linked = tmp_path / "linked" / "last.ckpt"
    linked.parent.mkdir()
    linked.symlink_to(elsewhere, target_is_directory=True)

    def weight_as_bytes(index) -> None:
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata

        index.state_dict_metadata["state_dict.model.w"] = BytesStorageMetadata()

    as_bytes = _with_index_changed(tmp_path / "as-bytes" / "last.ckpt", weight_as_bytes)
    for checkpoint, reason in (
        (linked_metadata, "(meta.pt is a link)"),
        (linked, f"a link to {elsewhere}; a run resumes only from its own checkpoints"),
        (as_bytes, "its index stores a weight as something other than a tensor"),
    ):
        assert resume_point([checkpoint]) is None and not checkpoint.exists()
        assert reason in capsys.readouterr().err
    assert (elsewhere / SHARDED_METADATA).is_file()  # the links went aside, not their targets


def test_a_sharded_checkpoint_changed_after_its_check_is_read_as_checked(
    tmp_path: Path, monkeypatch
) -> None:
    """Between kdlab's check and torch's reads, a shard file swapped for a link (to another
    run's) is refused, and a whole folder swapped for a link is not followed: every file
    is read through the folder kdlab opened and checked."""
    import warnings

    import torch

    import kdlab.checkpoints as checkpoints

    elsewhere = write_sharded_checkpoint(tmp_path / "other-run" / "last.ckpt", 9)
    real_read_index = checkpoints._read_index

    def load_after(swap, checkpoint: Path) -> torch.Tensor:
        calls = []

        def read_index_then_swap(*args):
            index = real_read_index(*args)
            calls.append(1)
            if len(calls) == 1:  # after kdlab's check, before torch reads
                swap(checkpoint)
            return index

        monkeypatch.setattr(checkpoints, "_read_index", read_index_then_swap)
        state = {"state_dict": {"model.w": torch.zeros(2)}}
        with warnings.catch_warnings():  # one process and no process group, as meant here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            checkpoints.load_sharded(state, checkpoint)
        monkeypatch.undo()
        return state["state_dict"]["model.w"]

    def shard_to_link(checkpoint: Path) -> None:
        (checkpoint / "__0_0.distcp").unlink()
        (checkpoint / "__0_0.distcp").symlink_to(elsewhere / "__0_0.distcp")

    def folder_to_link(checkpoint: Path) -> None:
        checkpoint.rename(checkpoint.with_name("moved"))
        checkpoint.symlink_to(elsewhere, target_is_directory=True)

    own = write_sharded_checkpoint(tmp_path / "run" / "last.ckpt", 4)
    with pytest.raises(ConfigError, match=f"checkpoint {own} does not load: __0_0.distcp is a"):
        load_after(shard_to_link, own)
    own = write_sharded_checkpoint(tmp_path / "run-b" / "last.ckpt", 4)
    assert torch.equal(load_after(folder_to_link, own), torch.full((2,), 4.0))  # not 9s


def test_kdlabs_own_files_load_as_data(teacher, train, tmp_path: Path) -> None:
    """Final weights and Lightning checkpoints (kdlab_shape, TAID state, callback state)
    all load with weights_only=True, so nothing kdlab writes needs a pickle."""
    import torch

    student = train(
        *STUDENT, "data=markov", "teacher=oracle", "objective.divergence=taid", "logger=csv"
    )
    for row in (teacher, student):
        run_dir = Path(row["run_dir"])
        weights = torch.load(run_dir / "model.pt", weights_only=True)
        assert set(weights) == {"shape", "base_d_model", "state_dict"}
        assert weights["shape"]["n_layer"] == row["n_layer"]
        checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert 0 < checkpoint["global_step"] <= row["steps"]  # every 50 steps
        assert checkpoint["kdlab_shape"] == weights["shape"]
        assert checkpoint["callbacks"]["TrainClock"]["wall_s"] > 0
    assert 0 < checkpoint["taid"]["t"] <= 1  # the student's: TAID's interpolation state


# ------------------------------------------------- a teacher's weights against its row

L1_TEACHER = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]
OF_L1 = [*STUDENT, "teacher.model=nano_L1", "teacher.tokens=16384"]


def test_the_row_records_the_weights_hash(teacher) -> None:
    weights = Path(teacher["run_dir"]) / "model.pt"
    assert teacher["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_weights_of_another_size_in_a_teachers_directory_are_refused(
    teacher, train, tmp_path: Path
) -> None:
    """An L2 model.pt in an L1 teacher's directory: by its hash, and for a row recorded
    before hashes (none), by its shape; no student row either way."""
    small = train(*L1_TEACHER)
    weights = Path(small["run_dir"]) / "model.pt"
    shutil.copyfile(Path(teacher["run_dir"]) / "model.pt", weights)
    message = refused(train, *OF_L1)
    assert message.startswith(f"teacher run {small['key']}'s weights {weights} are not the file")
    assert f"recorded {small['weights_sha256'][:12]}..." in message
    store = RunStore(f"sqlite:///{tmp_path / 'runs' / 'kdlab.db'}")
    store.update(small["key"], weights_sha256=None)
    assert refused(train, *OF_L1) == (
        f"teacher run {small['key']}'s weights {weights} are not of the run's shape: "
        "n_layer 2 (the run's: 1), d_model 32 (the run's: 16), n_head 2 (the run's: 1), "
        "d_ff 96 (the run's: 48)"
    )
    assert sorted(r["key"] for r in rows(tmp_path)) == sorted([teacher["key"], small["key"]])


def test_truncated_teacher_weights_are_refused(teacher, train, tmp_path: Path) -> None:
    weights = Path(teacher["run_dir"]) / "model.pt"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    assert "are not the file the run saved" in refused(train, *STUDENT, *BY_SETTINGS)
    store = RunStore(f"sqlite:///{tmp_path / 'runs' / 'kdlab.db'}")
    store.update(teacher["key"], weights_sha256=None)  # as recorded before hashes
    message = refused(train, *STUDENT, *BY_SETTINGS)
    assert message.startswith(f"teacher weights {weights} cannot be read as PyTorch weights (")
    assert [r["key"] for r in rows(tmp_path)] == [teacher["key"]]


# ------------------------------------------------------------- database passwords
# (tests/test_postgres.py greps every artefact of a run against a password-protected
# server; these hold without one)

SECRET_URL = "postgresql+psycopg://kd:hunter2@dbhost:5432/runs"


def test_a_password_in_db_url_is_refused_and_one_in_the_environment_is_masked(
    tmp_path: Path, monkeypatch
) -> None:
    from kdlab.rundb import configured_url
    from kdlab.runner import _recorded_config

    monkeypatch.delenv("KDLAB_DB_URL", raising=False)
    with pytest.raises(ConfigError) as caught:
        configured_url({"url": SECRET_URL, "sqlite": None})
    assert str(caught.value) == (
        "db.url postgresql+psycopg://kd:***@dbhost:5432/runs holds a password, which Hydra "
        "would save with the run's config: keep it in ~/.pgpass or PGPASSWORD, or give the "
        "whole URL in KDLAB_DB_URL"
    )
    assert configured_url({"url": "postgresql+psycopg://kd@dbhost/runs"})[1] == "db.url"
    monkeypatch.setenv("KDLAB_DB_URL", SECRET_URL)
    assert configured_url({"url": SECRET_URL}) == (SECRET_URL, "KDLAB_DB_URL")
    recorded = _recorded_config(compose_run(tmp_path, *TINY))
    assert recorded["db"]["url"] == "postgresql+psycopg://kd:***@dbhost:5432/runs"
    assert "hunter2" not in json.dumps(recorded)


def test_kdlab_train_refuses_a_password_before_hydra_writes(tmp_path: Path) -> None:
    result = run_cli(
        "kdlab.train", f"paths.root_dir={tmp_path}", *TINY, f"db.url={SECRET_URL}", cwd=tmp_path
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kdlab-train: error: db.url {SECRET_URL.replace('hunter2', '***')} ")
    assert "hunter2" not in result.stdout + result.stderr
    assert list(tmp_path.rglob("*")) == []  # no log folder, no .hydra, no database
