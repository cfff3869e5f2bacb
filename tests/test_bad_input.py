"""Bad input stops before training and before any database row: one sentence, exit code 2.

Each case is a setting or a file a user gets wrong. kdlab-train raises ConfigError (its
command line prints ``kdlab-train: error: <sentence>`` and exits 2) and the run database
gains no row; the settings checked first leave no database file at all. The kdlab
commands print ``kdlab: error: <sentence>`` and write no output file.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from kdlab.cli import main as kdlab_main
from kdlab.errors import ConfigError
from kdlab.rundb import RunStore, sqlite_url
from tests.conftest import FAST, REPO

TINY = ["model=nano_L1", "data.tokens=16384", "data.tokens_per_param=null"]
ORACLE_STUDENT = ["objective=distill", "teacher=oracle", "data=markov"]
DB_FILES = {"kdlab.db", "kdlab.db.lock", "kdlab.db-wal", "kdlab.db-shm"}


def assert_nothing_recorded(root: Path, database: bool = False, logs: bool = False) -> None:
    """No run directory and no row; ``database``: a database file may have been opened,
    ``logs``: Hydra's log folder made (a command line run)."""
    runs = root / "runs"
    left = {p.name for p in runs.iterdir()} if runs.exists() else set()
    allowed = (DB_FILES if database else set()) | ({"logs"} if logs else set())
    assert left <= allowed, left
    if "kdlab.db" in left:
        assert RunStore(f"sqlite:///{runs / 'kdlab.db'}", create=False).find() == []


def refused(train, *overrides: str) -> str:
    """The one sentence a run is refused with."""
    with pytest.raises(ConfigError) as err:
        train(*overrides)
    text = str(err.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------ kdlab-train settings

SETTINGS = [
    (["optim.lr=0"], "optim.lr must be a positive number, not 0"),
    (["optim.lr=-0.01"], "optim.lr must be a positive number, not -0.01"),
    (["optim.lr=inf"], "optim.lr must be a positive number, not inf"),
    (["optim.lr=nan"], "optim.lr must be a positive number, not nan"),
    (["optim.lr=fast"], "optim.lr must be a positive number, not fast"),
    (["optim.min_lr_ratio=2"], "optim.min_lr_ratio must be a number from 0 to 1, not 2"),
    (["seed=-1"], "seed must be a whole number from 0 to 2**32 - 1, not -1"),
    (["seed=1.5"], "seed must be a whole number from 0 to 2**32 - 1, not 1.5"),
    (["data=files"], "data.module.corpus.paths must be given"),
    ([*ORACLE_STUDENT, "objective.divergence=kl"], "unknown divergence 'kl'; expected one of"),
    ([*ORACLE_STUDENT, "objective.tau=0"], "tau must be a positive number, got 0"),
    ([*ORACLE_STUDENT, "objective.kd_lambda=2"], "objective.kd_lambda must be a number from 0"),
    ([*ORACLE_STUDENT, "objective.divergence=reverse_kl", "objective.top_k=8"], "is infinite"),
]


@pytest.mark.parametrize(("overrides", "sentence"), SETTINGS)
def test_bad_settings_leave_no_database(train, tmp_path, overrides, sentence):
    assert sentence in refused(train, *TINY, *overrides)
    assert_nothing_recorded(tmp_path)  # checked before the database is opened


def test_the_oracle_teacher_refuses_a_chain_of_higher_order(train, tmp_path):
    """The oracle's table has one row per token; an order-2 chain's rows are contexts of
    two tokens, so it would teach the wrong distribution and record the wrong L_T."""
    text = refused(train, *TINY, *ORACLE_STUDENT, "+data.module.corpus.markov_order=2")
    assert text.startswith(
        "teacher=oracle reads first-order chains; this markov corpus has markov_order 2"
    )
    assert_nothing_recorded(tmp_path, database=True)


@pytest.mark.parametrize("scale", ["nan", "inf", "0", "-1"])
def test_a_budget_scale_that_is_not_a_positive_number(train, tmp_path, scale):
    """One check, in kdlab.identity.run_tokens, serves runs and sweep planning."""
    text = refused(train, *TINY, f"data.budget_scale={scale}")
    assert text == f"data.budget_scale must be a positive number, not {float(scale):g}"
    assert_nothing_recorded(tmp_path, database=True)


# ------------------------------------------------------------------ data files


@pytest.fixture
def text_files(tmp_path: Path) -> Path:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "data[1].txt").write_text("the file named with brackets\n" * 50)
    (folder / "data1.txt").write_text("the file its name matches as a glob\n" * 50)
    (folder / "empty.jsonl").write_text("")
    return folder


def test_a_file_named_like_a_glob_is_that_file(text_files):
    from kdlab.data import build_corpus

    def files(*paths: str) -> list[str]:
        return build_corpus({"name": "files", "paths": list(paths)}).resolved_paths()

    bracketed, plain = text_files / "data[1].txt", text_files / "data1.txt"
    assert files(str(bracketed)) == [str(bracketed)]
    assert files(str(text_files / "data*.txt")) == [str(plain), str(bracketed)]  # a glob
    with pytest.raises(ValueError, match="matches no file"):
        files(str(text_files / "data[2].txt"))  # neither a file nor a match
    docs = list(build_corpus({"name": "files", "paths": [str(bracketed)]}).documents())
    assert docs == [bracketed.read_text()]


def test_an_empty_jsonl_is_named(train, tmp_path, text_files):
    empty = text_files / "empty.jsonl"
    text = refused(train, *TINY, "data=files", f"data.module.corpus.paths=[{empty}]")
    assert text == f"files corpus file '{empty}' is empty"
    assert_nothing_recorded(tmp_path, database=True)


def test_c4_unprepared_names_the_command_that_prepares_it(train, tmp_path):
    """A run reads a hub corpus only from its prepared token cache (never downloading it
    while holding GPUs); preparing it offline names the dataset and why."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest: no test reaches the hub
    cache = tmp_path / "cache"
    text = refused(train, *TINY, "data=c4", f"paths.cache_dir={cache}")
    assert text == (
        f"the hf corpus has no token cache for tokenizer bpe-32768 in {cache}: build it before "
        f"the runs with `kdlab data prepare data=c4 paths.cache_dir={cache}`"
    )
    assert_nothing_recorded(tmp_path, database=True)
    assert kdlab_main(["data", "prepare", "data=c4", f"paths.cache_dir={cache}"]) == 2


def test_data_prepare_fills_the_cache_a_run_then_reads(tmp_path, capsys):
    """Offline, preparing C4 names the dataset, why it cannot be read, and what to do."""
    cache = tmp_path / "cache"
    argv = ["data", "prepare", "data=markov", "data.module.corpus.n_tokens=20000"]
    assert kdlab_main([*argv, f"paths.cache_dir={cache}"]) == 0
    printed = capsys.readouterr().out
    [tokens] = list((cache / "tokens").glob("*.bin"))
    assert printed.strip().endswith(f"20,000 tokens in {tokens}")
    assert tokens.stat().st_size == 20000 * 2  # 64 states: uint16
    assert kdlab_main(["data", "prepare", "data=c4", f"paths.cache_dir={cache}"]) == 2
    assert capsys.readouterr().err == (
        "kdlab: error: the Hugging Face dataset allenai/c4 (en) cannot be downloaded here "
        "(HF_HUB_OFFLINE and HF_DATASETS_OFFLINE set): prepare its token cache where the hub "
        "can be reached (`kdlab data prepare` with the same data overrides) and use that "
        "paths.cache_dir\n"
    )


# ------------------------------------------------------------------ teacher files


def _weights_file(path: Path) -> Path:
    """Real kdlab weights of a tiny model (what a finished run leaves as model.pt)."""
    from kdlab.models.gpt import GPT
    from kdlab.models.ladder import get_shape
    from kdlab.teacher import save_weights

    model = GPT(get_shape("nano", "L1", vocab_size=256, n_ctx=128))
    path.mkdir(parents=True)
    save_weights(model, path)
    return path / "model.pt"


@pytest.fixture
def bad_teachers(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "teachers"
    whole = _weights_file(folder / "whole")
    out = {"truncated": folder / "truncated.pt", "json": folder / "teacher.json"}
    out["truncated"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out["json"].write_text('{"state_dict": {}}')
    buffer = io.BytesIO()
    torch.save({"epoch": 3}, buffer)  # a torch file, but no kdlab model in it
    out["foreign"] = folder / "foreign.pt"
    out["foreign"].write_bytes(buffer.getvalue())
    return out


@pytest.mark.parametrize(
    ("case", "sentence"),
    [
        (
            "truncated",
            "): not a kdlab weights file or checkpoint, or cut short",
        ),  # torch's reason varies
        ("json", "cannot be read as PyTorch weights ("),
        ("foreign", "is not a kdlab checkpoint (no model shape)"),
    ],
)
def test_a_teacher_checkpoint_that_is_not_one(train, tmp_path, bad_teachers, case, sentence):
    path = bad_teachers[case]
    text = refused(train, *TINY, "objective=distill", f"teacher.checkpoint={path}")
    assert text.startswith(f"teacher {'weights' if case != 'foreign' else 'checkpoint'} {path}")
    assert sentence in text
    assert_nothing_recorded(tmp_path, database=True)


def test_a_teachers_truncated_weights_stop_the_student_before_its_row(train, tmp_path):
    teacher = train(*TINY)
    weights = Path(teacher["run_dir"]) / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(ConfigError) as err:
        train(*TINY, "objective=distill", f"teacher.key={teacher['key']}")
    assert str(weights) in str(err.value) and "\n" not in str(err.value)
    store = RunStore(f"sqlite:///{tmp_path}/runs/kdlab.db", create=False)
    assert [row["key"] for row in store.find()] == [teacher["key"]]


# ------------------------------------------------------------------ the run database


@pytest.fixture
def damaged_databases(tmp_path: Path) -> dict[str, Path]:
    """A file that is no database, and a real one whose run pages were overwritten (it
    opens, and fails at the first read of its runs)."""
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database\n" * 100)
    damaged = tmp_path / "damaged.db"
    store = RunStore(f"sqlite:///{damaged}")
    for i in range(300):
        store.start(f"run{i:03d}", role="supervised", n_params=100, config={"pad": "x" * 400})
        store.finish(f"run{i:03d}", val_loss=3.0)
    store.engine.dispose()
    raw = bytearray(damaged.read_bytes())
    raw[8192:16384] = b"\xa5" * 8192  # pages 3 and 4 of 4096 bytes: the runs table's
    damaged.write_bytes(bytes(raw))
    return {"garbage": garbage, "damaged": damaged}


DAMAGE = {
    "garbage": "cannot open the run database '{url}': (sqlite3.DatabaseError) file is not a "
    "database",
    "damaged": "cannot use the run database '{url}': (sqlite3.DatabaseError) database disk "
    "image is malformed",
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
@pytest.mark.parametrize(
    "command",
    [
        ["runs", "--db", "{url}", "list"],
        ["runs", "--db", "{url}", "show", "run001"],
        ["runs", "--db", "{url}", "export", "--out", "{out}/runs.csv"],
        ["fit", "supervised", "--db", "{url}", "--out", "{out}/fit.json"],
        ["report", "--db", "{url}", "--out", "{out}/report", "--plan-budgets", "0"],
        ["sweep", "plan", "nano/teachers", "db.url={url}"],
    ],
)
def test_a_damaged_database_is_one_sentence(damaged_databases, tmp_path, capsys, case, command):
    url = f"sqlite:///{damaged_databases[case]}"
    out = tmp_path / "out"
    before = damaged_databases[case].read_bytes()
    assert kdlab_main([a.format(url=url, out=out) for a in command]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"kdlab: error: {DAMAGE[case].format(url=url)}"]
    assert not out.exists()  # no export, fit or report written
    assert damaged_databases[case].read_bytes() == before


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_database_stops_a_run(train, tmp_path, damaged_databases, case):
    url = f"sqlite:///{damaged_databases[case]}"
    assert refused(train, *TINY, f"db.url={url}") == DAMAGE[case].format(url=url)


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_export_to_a_path_that_cannot_be_written(tmp_path, capsys, where):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    store.start("a", role="teacher")
    (tmp_path / "a_file").write_text("")
    out = tmp_path if where == "a folder" else tmp_path / "a_file" / "runs.csv"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert kdlab_main(["runs", "--db", url, "export", "--out", str(out)]) == 2
    reason = "Is a directory" if where == "a folder" else "File exists"  # a_file, not a folder
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"kdlab: error: cannot write the export to {out}: {reason}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial file either


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_a_fit_out_that_cannot_be_written_is_refused_before_fitting(tmp_path, capsys, where):
    (tmp_path / "a_file").write_text("")
    out = tmp_path if where == "a folder" else tmp_path / "a_file" / "fit.json"
    csv = REPO / "data" / "chinchilla_epoch_svg_extracted.csv"
    assert kdlab_main(["fit", "supervised", "--csv", str(csv), "--out", str(out)]) == 2
    expected = (
        f"--out {out} is a folder; name the fit JSON to write."
        if where == "a folder"
        else f"the folder {out.parent} is not writable (File exists): choose another --out"
    )
    assert capsys.readouterr().err.splitlines() == [f"kdlab: error: {expected}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# ------------------------------------------------------------------ numeric options


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (["fit", "supervised", "--keep", "-1"], "argument --keep: -1 is less than 0"),
        (["fit", "supervised", "--final-keep", "-5"], "argument --final-keep: -5 is less than 0"),
        (["fit", "supervised", "--bootstrap", "-1"], "argument --bootstrap: -1 is less than 0"),
        (["fit", "supervised", "--level", "1.5"], "argument --level: '1.5' does not lie between"),
        (["fit", "supervised", "--huber-delta", "0"], "argument --huber-delta: '0' is not a pos"),
        (["fit", "supervised", "--max-iter", "0"], "argument --max-iter: 0 is less than 1"),
        (["fit", "supervised", "--polish", "0"], "argument --polish: 0 is less than 1"),
        (["fit", "supervised", "--drop-highest", "-2"], "argument --drop-highest: -2 is less"),
        (["fit", "supervised", "--threads", "-1"], "argument --threads: -1 is less than 0"),
        (["fit", "supervised", "--seed", "-1"], "argument --seed: -1 is less than 0"),
        (["fit", "supervised", "--n-ctx", "0"], "argument --n-ctx: 0 is less than 1"),
        (["fit", "supervised", "--n-vocab", "-3"], "argument --n-vocab: '-3' is not a positive"),
        (["predict", "--n", "-1", "--d", "1e9"], "argument --n: '-1' is not a positive number"),
        (["predict", "--n", "1e8", "--d", "0"], "argument --d: '0' is not a positive number"),
        (["predict", "--n", "1e8", "--tokens-per-param", "0"], "--tokens-per-param: '0' is not"),
        (["predict", "--n", "1e8", "--d", "1e9", "--teacher-loss", "-2"], "--teacher-loss: '-2'"),
        (["plan", "--student", "0", "--compute", "1e21"], "argument --student: '0' is not a"),
        (["plan", "--student", "1e8", "--compute=-1e21"], "--compute: '-1e21' is not a"),
        (["plan", "--student", "1e8", "--compute", "1e21", "--students", "0"], "0 is less than 1"),
        (["plan", "--student", "1e8", "--compute", "1e21", "--n-ctx", "-1"], "'-1' is not a"),
        (["report", "--plan-budgets", "-1"], "argument --plan-budgets: -1 is less than 0"),
        (["report", "--map-points", "-1"], "argument --map-points: -1 is less than 0"),
        (["report", "--jobs", "0"], "argument --jobs: 0 is less than 1"),
        (["report", "--plan-student", "-1"], "argument --plan-student: '-1' is not a positive"),
    ],
)
def test_numeric_options_out_of_range(tmp_path, capsys, argv, sentence):
    out = [] if argv[0] == "predict" else ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as done:
        kdlab_main([*argv, *out])
    assert done.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"kdlab {argv[0]}: error: {err[-1].split('error: ', 1)[1]}"
    assert sentence in err[-1]
    assert not (tmp_path / "out").exists()


def test_a_budget_beyond_the_planners_bound_is_refused_with_the_bound(capsys):
    argv = ["plan", "--coefficients", "paper", "--student", "198e6", "--compute", "1e40"]
    assert kdlab_main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "kdlab: error: A budget of 1e+40 FLOPs buys the 1.98e+08-parameter student alone "
        "5.69e+30 tokens, above the planner's upper bound of 1e+17 tokens (--bounds LO HI)."
    ]
    assert kdlab_main([*argv[:-1], "1e28", "--bounds", "1e6", "1e20"]) == 0  # widened


# ------------------------------------------------------------------ from the command line


def _without_root_powers() -> list[str]:
    """A command prefix under which root, too, is refused writes the file modes forbid."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("as root, a read-only folder needs setpriv (util-linux) to stay read-only")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def kdlab_train(
    root: Path, *overrides: str, prefix: Sequence[str] = (), launch: Sequence[str] = ()
):
    return subprocess.run(
        [*prefix, sys.executable, "-m", "kdlab.train", *launch, f"paths.root_dir={root}"]
        + [*FAST, *TINY, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_one_sentence(proc: subprocess.CompletedProcess, sentence: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"kdlab-train: error: {sentence}"], errors


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        (["optim.lr=nan"], "optim.lr must be a positive number, not nan"),
        (["seed=-1"], "seed must be a whole number from 0 to 2**32 - 1, not -1"),
        ([*ORACLE_STUDENT, "objective.divergence=kl"], "objective settings: unknown divergence"),
    ],
)
def test_the_command_line_exits_2_with_the_sentence(tmp_path, overrides, sentence):
    proc = kdlab_train(tmp_path, *overrides)
    assert proc.returncode == 2
    [line] = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert line.startswith(f"kdlab-train: error: {sentence}")
    assert_nothing_recorded(tmp_path, logs=True)


@pytest.mark.parametrize("launch", [[], ["-m", "-cd", "sweeps/nano", "-cn", "teachers"]])
def test_a_read_only_runs_folder_is_refused_before_any_compute(tmp_path, launch):
    """A single run, and a sweep before it launches a job."""
    prefix = _without_root_powers()
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    try:
        proc = kdlab_train(tmp_path, prefix=prefix, launch=launch)
    finally:
        runs.chmod(0o755)
    assert_one_sentence(
        proc,
        f"the folder {runs} is not writable (Permission denied): choose another run root "
        "(paths.root_dir= or KDLAB_ROOT)",
    )
    assert list(runs.iterdir()) == []  # not even Hydra's log folder


# ------------------------------------------------------------------ paths taken as written

# URL escapes, a query, a fragment, a space and an OmegaConf interpolation, in one folder
PECULIAR = "a%41 b?c#d${e}"


def test_a_run_root_named_with_url_and_interpolation_characters(tmp_path):
    """KDLAB_ROOT is taken as written: the run, its database and Hydra's log sit under it
    (not URL-decoded elsewhere, no interpolation error), and kdlab runs finds the run."""
    root = tmp_path / PECULIAR
    root.mkdir()
    env = {**os.environ, "KDLAB_ROOT": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "kdlab.train", *FAST, *TINY],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [database] = list(tmp_path.rglob("kdlab.db"))
    assert database == root / "runs" / "kdlab.db"
    [row] = RunStore(sqlite_url(database), create=False).find()  # a URL escaped as kdlab does
    assert row["status"] == "done" and row["run_dir"] == str(root / "runs" / row["key"])
    assert (root / "runs" / row["key"] / "model.pt").is_file()
    assert list((root / "runs" / "logs" / "hydra").glob("*/train.log"))
    listed = subprocess.run(
        [sys.executable, "-m", "kdlab.cli", "runs", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert row["key"] in listed.stdout and "done" in listed.stdout, listed.stderr


def test_a_root_override_with_those_characters(train, tmp_path):
    """``paths.root_dir=`` follows Hydra's override syntax: quoted, with ``\\${`` for a
    literal '${'; the folder is then used exactly."""
    root = tmp_path / PECULIAR
    quoted = "'" + str(root).replace("${", "\\${") + "'"
    row = train(*TINY, f"paths.root_dir={quoted}")
    assert row["status"] == "done" and row["run_dir"] == str(root / "runs" / row["key"])
    assert RunStore(sqlite_url(root / "runs" / "kdlab.db"), create=False).get(row["key"])
    assert [p.name for p in tmp_path.iterdir()] == [PECULIAR]
