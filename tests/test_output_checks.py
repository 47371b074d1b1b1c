"""Output-folder checks that the experiments and benchmarks run before any work."""

from pathlib import Path

import pytest

from jaxsci.train import check_output_dir, check_output_file


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_missing_folder_under_a_writable_one_passes_and_is_not_created(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_output_dir(target) == target
    assert check_output_file(target / "r.json") == target / "r.json"
    assert _listing(tmp_path) == []  # nothing made, no probe left behind


def test_an_existing_folder_passes(tmp_path):
    assert check_output_dir(tmp_path) == tmp_path


def test_a_file_in_the_way_is_refused(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        check_output_dir(blocker)
    with pytest.raises(ValueError, match="is not a folder"):
        check_output_dir(blocker / "sub" / "deeper")
    with pytest.raises(ValueError, match="is not a folder"):
        check_output_file(blocker / "r.json")
    assert _listing(tmp_path) == ["afile"]


def test_a_folder_given_as_an_output_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="it is a folder"):
        check_output_file(tmp_path)


def test_a_read_only_folder_is_refused(tmp_path, read_only):
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(ro)  # (as root: the immutable flag)
    with pytest.raises(ValueError, match="cannot write under"):
        check_output_dir(ro / "runs")


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_a_mount_that_refuses_folders_is_refused_even_for_root():
    # sysfs passes os.access(W_OK) for root but refuses mkdir: only a real attempt sees it.
    with pytest.raises(ValueError, match="cannot write under /sys/jaxsci-x"):
        check_output_dir("/sys/jaxsci-x/runs")


def test_an_existing_read_only_file_is_refused(tmp_path, read_only):
    target = tmp_path / "r.json"
    target.write_text("{}")
    read_only(target)
    with pytest.raises(ValueError, match="the file is read-only"):
        check_output_file(target)
