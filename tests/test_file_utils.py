import pytest

from mobilevit.file_utils import staged_directory


def test_success_replaces_the_folder_whole_and_leaves_no_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_directory(target) as staging:
        assert staging.parent == tmp_path and staging != target
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # untouched until the block succeeds
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_keeps_the_old_folder_and_removes_the_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with staged_directory(target) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert (target / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_new_folder_appears_only_on_success(tmp_path):
    target = tmp_path / "nested" / "out"
    with pytest.raises(ValueError):
        with staged_directory(target):
            raise ValueError
    assert not target.exists()
    with staged_directory(target) as staging:
        (staging / "a").write_text("a")
    assert (target / "a").read_text() == "a"
