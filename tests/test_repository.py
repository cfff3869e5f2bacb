"""Everything the project cites or reads is in the repository: a clone elsewhere works."""

from __future__ import annotations

import subprocess

from tests.conftest import REPO

# notes and data that live beside the development checkout, never in a user's clone
OUTSIDE = ("PAPER" + ".md", "DESIGN" + ".md", "../" + "shared", "shared/" + "data")


def test_nothing_cites_or_reads_files_outside_the_repository():
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found = []
    for name in listed:
        path = REPO / name
        if not path.is_file() or path.suffix in (".csv", ".png", ".parquet"):
            continue
        text = path.read_text(errors="replace")
        found += [f"{name}: {word}" for word in OUTSIDE if word in text]
    assert found == []


def test_the_chinchilla_csv_is_the_one_its_readme_describes():
    import hashlib

    readme = (REPO / "data" / "README.md").read_text()
    digest = hashlib.sha256((REPO / "data" / "chinchilla_epoch_svg_extracted.csv").read_bytes())
    assert f"sha256 of the file: `{digest.hexdigest()}`" in readme
    assert (
        len((REPO / "data" / "chinchilla_epoch_svg_extracted.csv").read_text().splitlines()) == 246
    )
