"""Files we write honour the umask (mkstemp alone would leave every file 0600)."""
import os
import stat

import pytest
import torch

from aitoolbox.cloud.AWS.s3 import download_file, upload_file
from aitoolbox.utils.io import atomic_torch_save, atomic_write_text


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_honour_the_umask(tmp_path, umask):
    text = atomic_write_text("{}", str(tmp_path / "results.json"))
    checkpoint = atomic_torch_save({"w": torch.ones(2)}, str(tmp_path / "model.pt"))
    assert mode(text) == mode(checkpoint) == 0o666 & ~umask   # 0644 under 022, 0600 under 077


def test_s3_download_honours_the_umask(tmp_path, s3_bucket, umask):
    source = tmp_path / "source.txt"
    source.write_text("hello")
    upload_file(str(source), s3_bucket, "a/source.txt")
    target = tmp_path / "downloaded" / "source.txt"
    download_file(s3_bucket, "a/source.txt", str(target))
    assert target.read_text() == "hello" and mode(target) == 0o666 & ~umask
