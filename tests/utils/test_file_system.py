"""aitoolbox.utils.file_system: folder hierarchy, zip / unzip."""
import os
import tarfile

import pytest

from aitoolbox.utils import file_system


def test_create_folder_hierarchy_keeps_existing(tmp_path):
    path, paths = file_system.create_folder_hierarchy(str(tmp_path), ["a", "b", "c"])
    assert path == os.path.join(str(tmp_path), "a", "b", "c") and os.path.isdir(path)
    assert paths == [os.path.join(str(tmp_path), *["a", "b", "c"][:i]) for i in range(4)]
    (tmp_path / "a" / "b" / "keep.txt").write_text("x")
    file_system.create_folder_hierarchy(str(tmp_path), ["a", "d"])
    assert (tmp_path / "a" / "b" / "keep.txt").read_text() == "x" and (tmp_path / "a" / "d").is_dir()


def test_create_folder_hierarchy_needs_existing_base(tmp_path):
    with pytest.raises(ValueError, match="base_folder_path does not exist"):
        file_system.create_folder_hierarchy(str(tmp_path / "missing"), ["a"])


@pytest.mark.parametrize("suffix", ["", ".zip"])
def test_zip_then_unzip_round_trip(tmp_path, suffix):
    source = tmp_path / "src"
    source.mkdir()
    for i, text in enumerate(["bla", "kuku lele", "how 1234"]):
        (source / f"file_{i}.txt").write_text(text)
    archive = file_system.zip_folder(str(source), str(tmp_path / "out") + suffix)
    assert archive == str(tmp_path / "out.zip") and os.path.isfile(archive)
    file_system.unzip_file(archive, str(tmp_path / "unzipped"))
    assert sorted(os.listdir(tmp_path / "unzipped")) == ["file_0.txt", "file_1.txt", "file_2.txt"]
    assert (tmp_path / "unzipped" / "file_1.txt").read_text() == "kuku lele"


def test_unzip_tar_gz_and_refuses_escaping_members(tmp_path):
    (tmp_path / "f.txt").write_text("hello")
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        tar.add(tmp_path / "f.txt", arcname="f.txt")
    file_system.unzip_file(str(good), str(tmp_path / "out"))
    assert (tmp_path / "out" / "f.txt").read_text() == "hello"
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "f.txt", arcname="../escape.txt")
    with pytest.raises(ValueError, match="outside"):
        file_system.unzip_file(str(bad), str(tmp_path / "out2"))
    assert not (tmp_path / "escape.txt").exists()
