"""``kdlab fit | predict | plan``: the scaling-law commands.

``add_commands`` registers them on the ``kdlab`` command (kdlab/cli.py); ``main`` runs
them on their own (``python -m kdlab.laws.cli fit ...``), which is what the tests use.
Bad input ends in one sentence on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}

# argparse types: every numeric option is checked for its range where it is parsed, so a
# value out of range is one sentence naming the option (argparse's own, exit code 2)


def number(text: str) -> float:
    """A positive count such as 198M, 1.82B, 7.75e9 or 3e21."""
    m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*([kKMBGT]?)\s*", str(text))
    try:
        if not m:
            raise ValueError
        value = float(m.group(1)) * _SUFFIX.get(m.group(2), 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 198M, 7.75e9)") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def positive(text: str) -> float:
    """A positive finite number such as a loss or a token ratio."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1, such as an interval level."""
    value = positive(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} does not lie between 0 and 1")
    return value


def whole(least: int) -> Callable[[str], int]:
    """A whole number of at least ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is less than {least}")
        return value

    return parse


# ----------------------------------------------------------------------------- fit


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        description="Fit a scaling law (the paper's supervised or distillation law) to runs "
        "from the run database or a CSV, with a multi-start Huber fit and optional "
        "bootstrap intervals.",
    )
    p.add_argument("law", choices=["supervised", "distillation"])
    src = p.add_argument_group("input")
    src.add_argument("--csv", help="CSV of runs (default: the run database)")
    src.add_argument(
        "--db", help="run database URL (default: KDLAB_DB_URL, else runs/kdlab.db under the root)"
    )
    src.add_argument("--corpus", help="database: only runs of this corpus (name or fingerprint)")
    src.add_argument("--tokenizer", help="database: only runs of this tokenizer")
    src.add_argument("--n-ctx", type=whole(1), help="database: only runs of this context length")
    src.add_argument(
        "--recipe",
        metavar="LABEL",
        help="database: only runs of this training recipe, as kdlab names it when the "
        "database holds several, e.g. 'lr=0.01 wd=0.0001 warmup=0.05 min_lr=0.001 "
        "z_loss=0.0001 batch=16 clip=1'",
    )
    src.add_argument(
        "--kd-objective",
        metavar="LABEL",
        help="database, distillation: only students of this objective, "
        "e.g. 'forward_kl lambda=1 tau=1' (the paper's)",
    )
    src.add_argument("--n-col", default="N", help="CSV column of N (supervised)")
    src.add_argument("--d-col", default="D", help="CSV column of D (supervised)")
    src.add_argument("--ns-col", default="N_S", help="CSV column of N_S (distillation)")
    src.add_argument("--ds-col", default="D_S", help="CSV column of D_S (distillation)")
    src.add_argument("--lt-col", default="L_T", help="CSV column of L_T (distillation)")
    src.add_argument("--loss-col", default="loss", help="CSV column of the loss")
    src.add_argument("--flops-col", help="CSV column of training FLOPs C: tokens are D = C / (6 N)")
    law = p.add_argument_group("law and objective")
    law.add_argument(
        "--form",
        default="paper",
        help="supervised form: chinchilla (gamma = 1) or paper (gamma free)",
    )
    law.add_argument(
        "--supervised",
        help="distillation: supervised coefficients for Ltilde_S: 'paper' or a supervised fit JSON",
    )
    law.add_argument("--huber-delta", type=positive, default=1e-4)
    law.add_argument(
        "--grid",
        default="paper",
        help="starts: paper, epoch (supervised: "
        "Epoch AI's 4,500) or a JSON file {parameter: [values]}",
    )
    sel = p.add_argument_group("selection")
    sel.add_argument("--drop-highest", type=whole(0), default=0, help="drop the K highest losses")
    where = sel.add_mutually_exclusive_group()
    where.add_argument(
        "--holdout",
        help="hold out the runs matching this expression (the complement of --fit-where)",
    )
    where.add_argument(
        "--fit-where",
        help="fit only runs matching this filter (columns, numbers, comparisons, "
        "and/or/not, parentheses: 'loss >= 2.3 and N < 1e9'); report the error on the rest",
    )
    unc = p.add_argument_group("uncertainty")
    unc.add_argument("--bootstrap", type=whole(0), default=0, help="B bootstrap resamples")
    unc.add_argument("--level", type=fraction, default=0.9, help="interval level")
    unc.add_argument("--seed", type=whole(0), default=0)
    se = p.add_argument_group("search (see kdlab/laws/optim.py)")
    se.add_argument(
        "--keep", type=whole(0), default=1000, help="starts kept after screening (0: all)"
    )
    se.add_argument(
        "--final-keep",
        type=whole(0),
        default=100,
        help="starts left by successive halving (0: no halving)",
    )
    se.add_argument("--max-iter", type=whole(1), default=300)
    se.add_argument("--polish", type=whole(1), default=5, help="optima refined with SciPy")
    se.add_argument(
        "--threads",
        type=whole(0),
        default=1,
        help="torch threads while fitting "
        "(default 1: fastest on a busy machine; 0: torch's default)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--out", help="write the fit JSON here")
    out.add_argument("--n-vocab", type=number, help="vocabulary size stored for plan's F(N)")
    out.add_argument("--json", action="store_true", help="print the fit JSON, not a table")
    out.add_argument(
        "--wandb",
        action="store_true",
        help="also log the fit JSON (--out) to W&B as an artifact (WANDB_MODE=offline honoured)",
    )
    out.add_argument("--wandb-project", default="kdlab")
    out.add_argument("--wandb-entity")
    p.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    return _guard(_run_fit, args)


def _run_fit(args: argparse.Namespace) -> int:
    from kdlab.laws.forms import DISTILLATION_SPEC, supervised_spec
    from kdlab.laws.io import (
        LawInputError,
        law_columns,
        load_supervised,
        read_csv_points,
        read_db_points,
        validate_points,
    )

    if args.out:  # before minutes of fitting, not after
        if Path(args.out).is_dir():
            raise LawInputError(f"--out {args.out} is a folder; name the fit JSON to write.")
        from kdlab.locking import writable_folder

        writable_folder(Path(args.out).parent, choose="another --out", make=False)
    if args.wandb and not args.out:
        raise LawInputError("--wandb logs the fit JSON as a W&B artifact; name it with --out.")
    if args.law == "distillation" and not args.supervised:
        raise LawInputError(
            "fit distillation needs --supervised paper or a supervised fit JSON for Ltilde_S."
        )
    if args.law == "distillation" and args.grid == "epoch":
        raise LawInputError("The epoch grid is for the supervised law; use --grid paper.")
    fit_where = _row_filter(args)  # refused before the database is read
    data_info: dict[str, Any]
    if args.csv:
        cols = {
            "N": args.n_col,
            "D": args.d_col,
            "N_S": args.ns_col,
            "D_S": args.ds_col,
            "L_T": args.lt_col,
            "loss": args.loss_col,
        }
        df = read_csv_points(args.csv, args.law, cols, args.flops_col)
        used = {k: v for k, v in cols.items() if k in law_columns(args.law)}
        data_info = {"source": str(args.csv), "flops_col": args.flops_col, "columns": used}
    else:
        filters = {
            "corpus": args.corpus,
            "tokenizer": args.tokenizer,
            "n_ctx": args.n_ctx,
            "recipe": args.recipe,
            "kd_objective": args.kd_objective,
        }
        from kdlab.rundb import announce, database_url, shown_url

        url, source = database_url(args.db)
        announce(url, source)
        df, comparable = read_db_points(url, args.law, filters)
        data_info = {"source": shown_url(url), **comparable}
        if "run_key" in df.columns:
            data_info["run_keys"] = [str(k) for k in df["run_key"]]
    try:
        spec = DISTILLATION_SPEC if args.law == "distillation" else supervised_spec(args.form)
    except ValueError as exc:
        raise LawInputError(str(exc)) from None
    validate_points(df, args.law, len(spec.params))  # before torch and the fit load
    sup = load_supervised(args.supervised) if args.law == "distillation" else None

    from kdlab.laws.fit import SearchSettings, default_flops, fit_distillation, fit_supervised

    search = SearchSettings(
        keep=args.keep or None,
        final_keep=args.final_keep or None,
        max_iter=args.max_iter,
        n_polish=args.polish,
        threads=args.threads or None,
    )
    common = dict(
        huber_delta=args.huber_delta,
        grid=args.grid,
        search=search,
        drop_highest=args.drop_highest,
        fit_where=fit_where,
        bootstrap=args.bootstrap,
        level=args.level,
        seed=args.seed,
    )
    if args.law == "supervised":
        doc = fit_supervised(df, form=args.form, **common)
    else:
        assert sup is not None
        sup_coef, sup_doc = sup
        sup_doc = {k: v for k, v in sup_doc.items() if k not in ("data", "other_optima")}
        sup_doc["source"] = args.supervised
        doc = fit_distillation(df, sup_coef, supervised_doc=sup_doc, **common)
    doc["data"] = data_info
    floors = df["known_floor"] if "known_floor" in df else None
    if args.law == "supervised" and floors is not None and floors.notna().all():
        if floors.nunique() == 1:  # one corpus and context: one floor
            doc["known_floor"] = float(floors.iloc[0])
    # runs from the database say their own vocabulary and aspect ratio
    shape = {
        c: float(df[c].median()) for c in ("vocab_size", "rho") if c in df and df[c].notna().all()
    }
    doc["flops"] = default_flops(
        data_info.get("n_ctx"), args.n_vocab or shape.get("vocab_size"), shape.get("rho")
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_fit(doc, args.out)
    return _log_fit(args, doc) if args.wandb else 0


def _floor_line(doc: dict[str, Any]) -> str:
    """E against the least loss the corpus allows, where that is known (a Markov chain):
    the one check of a fitted E against the truth."""
    e, floor = doc["coefficients"]["E"], doc["known_floor"]
    line = (
        f"E {e:.4g} against the corpus's known floor {floor:.4g} (the least loss at this "
        f"context): {(e - floor) / floor:+.1%}"
    )
    lo_hi = (doc.get("intervals") or {}).get("E")
    if lo_hi:
        inside = lo_hi[0] <= floor <= lo_hi[1]
        where = "inside" if inside else "outside"
        line += f", the floor {where} E's {100 * doc['interval_level']:g}% interval"
    return line


def _log_fit(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """The fit JSON as a W&B artifact, its record added to the JSON; a W&B failure leaves
    the fit written and exits 1."""
    from kdlab.wandb_artifacts import add_record, log_fit

    path = Path(args.out)
    try:
        record = log_fit(path, doc, args.wandb_project, args.wandb_entity)
    except Exception as exc:  # W&B fails in many ways (network, auth); the fit stands
        failed = f"the fit is written, but logging it to W&B failed: {exc}"
        print(f"kdlab: error: {failed}", file=sys.stderr)
        return 1
    add_record(path, "wandb_artifact", record)
    print(f"logged the fit to W&B as artifact {record['name']} (digest {record['digest']})")
    return 0


def _row_filter(args: argparse.Namespace) -> str | None:
    """The fit's row filter (--holdout as the complement of --fit-where), checked by its
    grammar so a filter that does not parse is named with its option."""
    from kdlab.laws.row_filter import negated, parse_filter

    if args.holdout is not None:
        parse_filter(args.holdout, "--holdout")
        return negated(args.holdout)
    if args.fit_where is not None:
        parse_filter(args.fit_where, "--fit-where")
    return args.fit_where


def _source_warnings(coefs: dict[str, Any]) -> list[str]:
    from kdlab.laws.flags import source_warnings  # late: numpy, which --help does not need

    return source_warnings(coefs)


def _print_warnings(warnings: list[str]) -> None:
    """Degenerate results, in red, before the numbers they are about."""
    from kdlab.console import console

    for text in warnings:
        console.print(f"[bold red]warning:[/] {text}")


def _print_fit(doc: dict[str, Any], out: str | None) -> None:
    from rich.table import Table

    from kdlab.console import console

    level = doc.get("interval_level")
    _print_warnings(doc.get("warnings", []))
    flags = doc.get("flags") or {}
    title = f"{doc['law']} law ({doc['form']}), {doc['n_points']} runs"
    table = Table(title=title)
    table.add_column("coefficient")
    table.add_column("value", justify="right")
    if "intervals" in doc:
        table.add_column(f"{100 * level:g}% interval", justify="right")
    if flags:
        table.add_column("degenerate")
    for name, value in doc["coefficients"].items():
        row = [name, f"{value:.6g}"]
        if "intervals" in doc:
            lo_hi = doc["intervals"].get(name)
            row.append(f"{lo_hi[0]:.6g} - {lo_hi[1]:.6g}" if lo_hi else "fixed")
        if flags:
            row.append(flags.get(name) or flags.get(f"{name}'") or "")
        table.add_row(*row)
    console.print(table)
    console.print(
        f"Huber objective {doc['objective']:.10g} (delta {doc['huber_delta']:g}); "
        f"grid {doc['grid']}: {doc['n_starts']} starts, {doc['n_starts_defined']} defined, "
        f"{doc['n_starts_optimised']} optimised; {doc['fit_seconds']:.2f} s"
    )
    fe = doc["fit_error"]
    console.print(
        f"fit error: mean |rel| {fe['mean_abs_rel_error']:.3%}, max {fe['max_abs_rel_error']:.3%}"
    )
    if "known_floor" in doc:
        console.print(_floor_line(doc))
    he = doc.get("heldout_error")
    if he:
        console.print(
            f"held-out error ({he['n_points']} runs not matching --fit-where): mean |rel| "
            f"{he['mean_abs_rel_error']:.3%}, max {he['max_abs_rel_error']:.3%}, "
            f"mean signed {he['mean_rel_error']:+.3%}"
        )
    if "bootstrap" in doc:
        b = doc["bootstrap"]
        console.print(f"bootstrap: {b['resamples']} resamples, {b['seconds']:.1f} s")
    if out:
        console.print(f"wrote {out}")


# ------------------------------------------------------------------------- predict


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        description="Loss of N parameters trained on D tokens: the supervised law, or the "
        "distillation law when a teacher loss (or teacher size and tokens) is given.",
    )
    p.add_argument("--coefficients", default="paper", help="'paper' or a fit JSON")
    p.add_argument("--n", type=number, nargs="+", required=True, help="(student) parameters")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--d", type=number, nargs="+", help="(student) training tokens")
    tok.add_argument("--tokens-per-param", type=positive, nargs="+", help="D = M * N")
    p.add_argument("--teacher-loss", type=positive, nargs="+", help="L_T: predict a student")
    p.add_argument(
        "--teacher-params",
        type=number,
        help="teacher N_T (L_T from the supervised law, with --teacher-tokens)",
    )
    p.add_argument("--teacher-tokens", type=number, help="teacher D_T")
    p.add_argument("--json", action="store_true", help='print {"loss": ...}')
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    return _guard(_run_predict, args)


def _run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from kdlab.laws.forms import distillation_loss, supervised_loss
    from kdlab.laws.io import LawInputError, load_coefficients

    coefs = load_coefficients(args.coefficients)
    n = np.asarray(args.n, dtype=float)
    d = (
        np.asarray(args.d, dtype=float)
        if args.d is not None
        else np.asarray(args.tokens_per_param, dtype=float) * n
    )
    l_t = None
    if args.teacher_loss is not None:
        l_t = np.asarray(args.teacher_loss, dtype=float)
    if (args.teacher_params is None) != (args.teacher_tokens is None):
        raise LawInputError("Give --teacher-params and --teacher-tokens together.")
    if args.teacher_params is not None:
        if l_t is not None:
            raise LawInputError("Give either --teacher-loss or the teacher's size and tokens.")
        _positive("--teacher-params", [args.teacher_params, args.teacher_tokens])
        l_t = supervised_loss(args.teacher_params, args.teacher_tokens, coefs["supervised"])
    _positive("--n", n)
    _positive("--d", d)
    if l_t is not None:
        _positive("--teacher-loss", l_t)
        if coefs["distillation"] is None:
            raise LawInputError(
                f"{args.coefficients} is a supervised fit; a teacher loss needs distillation "
                "coefficients (--coefficients paper or a distillation fit JSON)."
            )
    try:
        shape = np.broadcast_shapes(n.shape, d.shape, () if l_t is None else np.shape(l_t))
    except ValueError:
        raise LawInputError(
            "--n, --d and --teacher-loss must have one value each or the same number of values."
        ) from None
    if l_t is None:
        loss = supervised_loss(n, d, coefs["supervised"])
    else:
        loss = distillation_loss(n, d, l_t, coefs["distillation"], coefs["supervised"])
    loss = np.broadcast_to(loss, shape)
    warnings = _source_warnings(coefs)
    if args.json:
        value: Any = float(loss.ravel()[0]) if loss.size == 1 else [float(v) for v in loss]
        print(json.dumps({"loss": value, **({"warnings": warnings} if warnings else {})}))
        return 0
    _print_warnings(warnings)
    from rich.table import Table

    from kdlab.console import console

    table = Table(title="distilled student" if l_t is not None else "supervised")
    for col in ("N", "D") + (("L_T",) if l_t is not None else ()) + ("loss",):
        table.add_column(col, justify="right")
    nb, db = np.broadcast_to(n, shape), np.broadcast_to(d, shape)
    lb = None if l_t is None else np.broadcast_to(l_t, shape)
    for i in np.ndindex(shape):
        row = [f"{nb[i]:.4g}", f"{db[i]:.4g}"] + ([f"{lb[i]:.4f}"] if lb is not None else [])
        table.add_row(*row, f"{loss[i]:.4f}")
    console.print(table)
    return 0


def _positive(name: str, values) -> None:
    import numpy as np

    v = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(v) & (v > 0)):
        raise _input_error(f"{name} must be positive numbers, not {values}.")


def _input_error(msg: str) -> Exception:
    from kdlab.laws.io import LawInputError

    return LawInputError(msg)


# ---------------------------------------------------------------------------- plan


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        description="Choose teacher size, teacher tokens and student tokens for a student "
        "size and compute budget (the paper's compute-optimal distillation), and compare "
        "with training the student alone.",
    )
    p.add_argument("--coefficients", default="paper", help="'paper' or a distillation fit JSON")
    p.add_argument("--student", type=number, required=True, help="student parameters N_S")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--compute",
        type=number,
        help="budget C in FLOPs (per student); refused when the student alone would train "
        "on more tokens than the search's upper bound (see --bounds)",
    )
    budget.add_argument(
        "--tokens-per-param",
        type=positive,
        help="budget that trains the student alone on M * N_S tokens: C = 3 F(N_S) M N_S",
    )
    p.add_argument(
        "--scenario", default="best", help="best | inference | pretraining | pretraining+inference"
    )
    p.add_argument(
        "--students", type=whole(1), default=1, help="K students share one teacher's pretraining"
    )
    p.add_argument(
        "--crossover",
        action="store_true",
        help="find the compute above which training alone beats distillation",
    )
    p.add_argument(
        "--teacher-loss",
        type=positive,
        help="with --crossover: a fixed, already trained teacher of this loss",
    )
    p.add_argument("--n-ctx", type=number, help="override F(N)'s context length")
    p.add_argument("--n-vocab", type=number, help="override F(N)'s vocabulary size")
    p.add_argument(
        "--bounds",
        type=number,
        nargs=2,
        metavar=("LO", "HI"),
        help="search N_T, D_T, D_S within [LO, HI] (default: the fit's, else 1e6 1e17)",
    )
    p.add_argument("--json", action="store_true", help="print JSON, not a table")
    p.add_argument("--out", help="write the full result as JSON here")
    p.set_defaults(func=run_plan)


PLAN_JSON_KEYS = (
    "scenario",
    "student_loss",
    "supervised_loss",
    "teacher_loss",
    "teacher_params",
    "teacher_tokens",
    "student_tokens",
    "compute_shares",
    "verdict",
    "warnings",
)


def run_plan(args: argparse.Namespace) -> int:
    return _guard(_run_plan, args)


def _run_plan(args: argparse.Namespace) -> int:
    from kdlab.laws.compute import flops_per_token, get_scenario
    from kdlab.laws.io import LawInputError, load_coefficients
    from kdlab.laws.plan import plan
    from kdlab.laws.tradeoffs import crossover

    get_scenario(args.scenario)  # an unknown scenario fails before any file is read
    coefs = load_coefficients(args.coefficients)
    if args.n_ctx:
        coefs["flops"]["n_ctx"] = args.n_ctx
    if args.n_vocab:
        coefs["flops"]["n_vocab"] = args.n_vocab
    if args.bounds:
        if not 0 < args.bounds[0] < args.bounds[1]:
            raise LawInputError("--bounds needs 0 < LO < HI.")
        coefs["bounds"] = tuple(args.bounds)
    if args.crossover:
        result = crossover(coefs, args.student, args.scenario, args.students, args.teacher_loss)
        result["warnings"] = _source_warnings(coefs)
        printed = result
    else:
        compute = args.compute
        if args.tokens_per_param is not None:
            if not args.tokens_per_param > 0:
                raise LawInputError("--tokens-per-param must be a positive number.")
            f_s = flops_per_token(args.student, coefs["flops"])
            compute = float(3.0 * f_s * args.tokens_per_param * args.student)
        if compute is None:
            raise LawInputError("plan needs --compute C or --tokens-per-param M (or --crossover).")
        result = plan(coefs, args.student, compute, args.scenario, args.students)
        result["warnings"] = _source_warnings(coefs) + result["warnings"]
        printed = {k: result[k] for k in PLAN_JSON_KEYS}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(printed, indent=2))
        return 0
    _print_plan(result)
    return 0


def _print_plan(result: dict[str, Any]) -> None:
    from rich.table import Table

    from kdlab.console import console

    _print_warnings(result.get("warnings", []))
    table = Table(title=f"plan: {result['scenario']}", show_header=False)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key == "warnings":
            continue
        if key == "compute_shares":
            for part, share in value.items():
                table.add_row(f"compute share: {part}", f"{share:.1%}")
        elif key == "crossovers":
            for c in value:
                table.add_row(
                    "crossover",
                    f"C = {c['compute']:.4g} FLOPs (M = {c['tokens_per_param']:.4g}"
                    f"), above it: {c['above']}",
                )
        elif isinstance(value, float):
            table.add_row(key, f"{value:.6g}")
        elif isinstance(value, list):
            table.add_row(key, " - ".join(f"{v:.4g}" for v in value))
        elif value is not None:
            table.add_row(key, str(value))
    console.print(table)
    per = result.get("students", 1)
    console.print(
        "compute_used: the plan's FLOPs over the budget (1 = all of it); compute shares: of "
        "one student's budget"
        + (
            f", which pays 1/{per} of the teacher's pretraining (--students {per} share it)"
            if per > 1
            else ""
        ),
        style="dim",
    )
    if result["scenario"] == "pretraining":  # logits computed once and reused
        console.print(
            "how it runs: `kdlab teacher cache` computes the teacher's top-k logits once over "
            "the student's tokens, then each student trains from them with teacher=cache "
            "(the cache's FLOPs are counted once: `kdlab runs compute`)"
        )


# ---------------------------------------------------------------------------- glue


def _guard(fn, args: argparse.Namespace) -> int:
    """Run a command; unreadable input files become one sentence on stderr and exit 2
    (bad values raise ConfigError, which the kdlab command reports the same way)."""
    from kdlab.errors import error_exit

    try:
        return fn(args)
    except (OSError, json.JSONDecodeError) as exc:
        return error_exit("kdlab", exc)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fit``, ``predict`` and ``plan`` on the ``kdlab`` command."""
    _add_fit(subparsers)
    _add_predict(subparsers)
    _add_plan(subparsers)
