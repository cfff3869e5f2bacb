"""Throughput of ``kdlab data prepare`` at 1 and more processes, on a local jsonl corpus.

The corpus (``--mb`` MB of the standard library's sources, cut into ~4 kB documents) and a
BPE tokenizer file (trained here on its first 2 MB) are written to a temporary folder.
Each variant is the real command (``python -m kdlab.cli data prepare --num-proc N``) into
an empty cache folder, round-robin ``--repeats`` times so the load of a shared machine
hits all alike; the 1-process run is the baseline. A prepare of a corpus already prepared
measures the command's fixed cost (start-up, composition, the files' source key).

    python benchmarks/data_prepare.py --mb 20 --procs 1 2 --out data_prepare.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_corpus(path: Path, megabytes: float) -> int:
    """``megabytes`` of stdlib source as jsonl documents of ~4 kB; returns the bytes."""
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    target, size = int(megabytes * 1e6), 0
    with open(path, "w") as out:
        while size < target:
            for source in sources:
                text = source.read_text(encoding="utf-8", errors="ignore")
                for start in range(0, len(text), 4000):
                    doc = text[start : start + 4000]
                    out.write(json.dumps({"text": doc}) + "\n")
                    size += len(doc.encode())
                    if size >= target:
                        return size
    return size


def train_bpe(corpus: Path, out: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts, used = [], 0
    for line in corpus.open():
        texts.append(json.loads(line)["text"])
        used += len(texts[-1])
        if used > 2_000_000:
            break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(out))


def prepare(corpus: Path, tokenizer: str, cache: Path, procs: int) -> float:
    argv = [sys.executable, "-m", "kdlab.cli", "data", "prepare", "--num-proc", str(procs)]
    argv += ["data=files", f"data.module.corpus.paths=[{corpus}]"]
    argv += [f"data.module.tokenizer={tokenizer}", f"paths.cache_dir={cache}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="corpus size in MB")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        n_bytes = write_corpus(corpus, args.mb)
        train_bpe(corpus, tmp / "bpe.json", args.vocab)
        tokenizers = {"byte": "byte", f"bpe-{args.vocab}": str(tmp / "bpe.json")}
        times: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for label, tokenizer in tokenizers.items():
                caches = []
                for procs in args.procs:
                    cache = tmp / f"cache-{label}-{procs}"
                    shutil.rmtree(cache, ignore_errors=True)
                    times.setdefault(f"{label} x{procs}", []).append(
                        prepare(corpus, tokenizer, cache, procs)
                    )
                    caches.append(sorted((cache / "tokens").glob("*.bin"))[0].read_bytes())
                assert all(c == caches[0] for c in caches), "caches differ between processes"
                again = prepare(corpus, tokenizer, cache, args.procs[-1])
                times.setdefault(f"{label} prepared already", []).append(again)
        results = {}
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"corpus: {n_bytes / 1e6:.1f} MB of jsonl text; load average now: {load}")
        for label, values in times.items():
            median = statistics.median(values)
            base = statistics.median(times[f"{label.split()[0]} x{args.procs[0]}"])
            results[label] = {"seconds": values, "median": median, "speedup": base / median}
            if "already" in label:  # the fixed cost: no throughput to compare
                print(f"{label:28s} {median:8.1f} s")
                continue
            rate = n_bytes / 1e6 / median
            print(
                f"{label:28s} {median:8.1f} s {rate:6.2f} MB/s  x{base / median:.2f} vs 1 process"
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"bytes": n_bytes, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
