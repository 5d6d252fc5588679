"""pytest entry of the regression check (run by ci/test.sh after the book is built).

One test per chapter: its last execution by ``ci/build_book.py`` against ``ci/baselines/<chapter>.json``.
A failure lists every output that moved, with the baseline value and the new one; see
``ci/baselines.py`` for the rules and for accepting new numbers.
"""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines  # noqa: E402

RECORDS = baselines.book_records()


@pytest.mark.parametrize("chapter", sorted(RECORDS))
def test_chapter_matches_its_regression_baseline(chapter):
    record = json.loads(RECORDS[chapter].read_text())
    problems = baselines.compare(record, baselines.load_baseline(chapter))
    if problems:
        pytest.fail(f"{len(problems)} output(s) of {chapter} differ from ci/baselines/{chapter}.json "
                    f"(record {RECORDS[chapter].name}):\n  " + "\n  ".join(map(str, problems))
                    + f"\nIf intended: python ci/baselines.py accept {chapter}; review git diff ci/baselines; commit.",
                    pytrace=False)


@pytest.mark.parametrize("chapter", sorted(RECORDS))
def test_page_says_when_it_ran_on_the_committed_sample(chapter):
    """The build runs with the full datasets absent (ci/test.sh): every page whose run used a committed
    sample must tell its reader so (the loaders' notice, ``lib.data``: "committed SAMPLE")."""
    record = json.loads(RECORDS[chapter].read_text())
    samples = sorted(name for name, d in (record.get("data") or {}).items() if isinstance(d, dict) and d.get("sample"))
    if not samples:
        pytest.skip(f"{chapter} used no committed sample")
    page = Path(__file__).resolve().parent.parent / "_build" / "html" / "chapters" / f"{chapter}.html"
    assert page.exists(), f"{page} was not built"
    assert "committed SAMPLE" in page.read_text(encoding="utf-8"), (
        f"{chapter} ran on the committed sample of {', '.join(samples)} but its page does not say so: "
        f"print the dataset's describe() (lib.data) in a visible cell")
