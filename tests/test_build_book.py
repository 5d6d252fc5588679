"""ci/build_book.py: a chapter is re-executed when its source, lib/ or the parameters change."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ci"))
import build_book  # noqa: E402


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "lib" / "models").mkdir(parents=True)
    (tmp_path / "chapters" / "a.md").write_text("# A\n")
    (tmp_path / "lib" / "x.py").write_text("X = 1\n")
    (tmp_path / "lib" / "models" / "m.py").write_text("M = 1\n")
    (tmp_path / "requirements.txt").write_text("torch==2.13.0\n")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapters/a\n  - file: chapters/missing\n")
    monkeypatch.setattr(build_book, "REPO", tmp_path)
    return tmp_path


def test_key_changes_with_source_lib_requirements_and_parameters(repo):
    src = repo / "chapters" / "a.md"
    key = build_book.execution_key(src, {"profile": "quick"})
    assert key == build_book.execution_key(src, {"profile": "quick"})
    assert key != build_book.execution_key(src, {"profile": "full"})
    for path, text in [(repo / "lib" / "models" / "m.py", "M = 2\n"), (repo / "requirements.txt", "torch==2.14.1\n"), (src, "# B\n")]:
        old = path.read_text()
        path.write_text(text)
        assert build_book.execution_key(src, {"profile": "quick"}) != key, path
        path.write_text(old)
    assert build_book.execution_key(src, {"profile": "quick"}) == key


def test_chapters_are_taken_from_the_toc(repo):
    assert build_book.chapters_in_toc() == [repo / "chapters" / "a.md"]


def test_aggregating_chapters_depend_on_the_chapters_before_them(repo):
    src = repo / "chapters" / "a.md"
    scorecard = repo / "chapters" / "scorecard.md"
    scorecard.write_text("# S\n")
    assert build_book.execution_key(scorecard, {"profile": "quick"}, "k1") != build_book.execution_key(scorecard, {"profile": "quick"}, "k2")
    assert build_book.execution_key(src, {"profile": "quick"}) == build_book.execution_key(src, {"profile": "quick"}, "")
