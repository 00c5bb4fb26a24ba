"""The experiment folder: names that cannot escape, root checks, hyperparameters, script, sources."""
import json
import os
import zipfile

import pytest

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.experiment_store import ExperimentStore, validate_cloud_save_mode


@pytest.mark.parametrize("name", ["..", ".", "", "  ", "a/b", "../x", "/abs", "a\\b", "x\0y"])
def test_escaping_names_rejected(name, tmp_path):
    with pytest.raises(ValueError, match="project_name"):
        ef.ExperimentFolder(tmp_path, name, "exp")
    with pytest.raises(ValueError, match="experiment_name"):
        ef.ExperimentFolder(tmp_path, "proj", name)
    assert os.listdir(tmp_path) == []


def test_name_must_be_str(tmp_path):
    with pytest.raises(TypeError, match="project_name"):
        ef.ExperimentFolder(tmp_path, 3, "exp")


def test_root_under_a_file_rejected(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="local_model_result_folder_path.*is a file"):
        ef.ExperimentFolder(blocker / "results", "p", "e")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_root_rejected(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="not writable"):
            ef.ExperimentFolder(read_only / "results", "p", "e")
    finally:
        read_only.chmod(0o700)


def test_layout_and_unique_folder(tmp_path):
    first = ef.ExperimentFolder(tmp_path, "proj", "exp", timestamp="2024-01-01_00-00-00")
    second = ef.ExperimentFolder(tmp_path, "proj", "exp", timestamp="2024-01-01_00-00-00")
    assert not os.path.exists(first.path)  # nothing is created before create()
    assert first.create() and not first.create()
    assert second.create()
    assert second.name == "exp_2024-01-01_00-00-00_1"
    assert sorted(os.listdir(first.path)) == ["checkpoint_model", "model", "results"]
    assert first.path == os.path.join(str(tmp_path), "proj", "exp_2024-01-01_00-00-00")
    assert first.relative(first.sub_path("results", "a.json")) == "results/a.json"
    with pytest.raises(ValueError, match="outside"):
        first.relative(str(tmp_path))


def test_hyperparams_dict_copied_not_mutated(tmp_path):
    given = {"lr": 0.1, "layers": [1, 2]}
    loaded, source = ef.load_hyperparams(given)
    loaded["layers"].append(3)
    assert given == {"lr": 0.1, "layers": [1, 2]} and source is None


@pytest.mark.parametrize("suffix, text", [(".yaml", "lr: 0.5\nname: run\n"), (".json", '{"lr": 0.5, "name": "run"}')])
def test_hyperparams_from_file(tmp_path, suffix, text):
    path = tmp_path / f"hp{suffix}"
    path.write_text(text)
    loaded, source = ef.load_hyperparams(str(path))
    assert loaded == {"lr": 0.5, "name": "run"} and source == str(path)


def test_hyperparams_bad_input(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ef.load_hyperparams(str(tmp_path / "missing.yaml"))
    (tmp_path / "hp.txt").write_text("lr=1")
    with pytest.raises(ValueError, match=".yaml"):
        ef.load_hyperparams(str(tmp_path / "hp.txt"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(TypeError, match="mapping"):
        ef.load_hyperparams(str(tmp_path / "list.json"))
    with pytest.raises(TypeError, match="hyperparams"):
        ef.load_hyperparams(42)


@pytest.mark.parametrize("mode", ["gs", "azure", "S3", 5])
def test_unknown_cloud_save_mode(mode):
    with pytest.raises(ValueError, match="cloud_save_mode"):
        validate_cloud_save_mode(mode)


def test_cloud_dir_prefix_checks():
    assert ef.validate_cloud_dir_prefix("/a/b/") == "a/b"
    with pytest.raises(ValueError, match="cloud_dir_prefix"):
        ef.validate_cloud_dir_prefix("a/../b")


def test_store_writes_hyperparams_script_and_sources(tmp_path):
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "mod.py").write_text("X = 1\n")
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    hp_file = tmp_path / "hp.yaml"
    hp_file.write_text("lr: 0.25\n")
    store = ExperimentStore("proj", "exp", tmp_path / "results", str(hp_file), cloud_save_mode=None,
                            source_dirs=[str(source)])
    assert not os.path.exists(store.path)
    store.ensure_created()
    files = sorted(os.listdir(store.path))
    assert files == sorted(["checkpoint_model", "model", "results", "hyperparams.json", "hyperparams_source.yaml",
                            os.path.basename(__file__), "source_code.zip"])
    with open(os.path.join(store.path, "hyperparams.json")) as f:
        assert json.load(f) == {"lr": 0.25}
    with zipfile.ZipFile(os.path.join(store.path, "source_code.zip")) as archive:
        assert archive.namelist() == ["src/pkg/mod.py"]
    assert store.s3_key(os.path.join(store.path, "model", "m.pt")) == f"proj/{store.folder.name}/model/m.pt"


def test_experiment_file_path_from_hyperparams(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text("print('hi')\n")
    store = ExperimentStore("p", "e", tmp_path / "r", {"experiment_file_path": str(script)}, cloud_save_mode="local")
    store.ensure_created()
    assert os.path.isfile(os.path.join(store.path, "train_script.py"))


def test_bad_source_dirs(tmp_path):
    with pytest.raises(ValueError, match="source_dirs"):
        ExperimentStore("p", "e", tmp_path, {}, cloud_save_mode=None, source_dirs=[str(tmp_path / "nope")])


def test_a_checkpoint_folder_is_mirrored_and_removed_whole(tmp_path, s3_bucket):
    """A sharded (FSDP) checkpoint is a folder: every file in it is uploaded, and removal takes it all."""
    import boto3

    store = ExperimentStore("proj", "exp", tmp_path, {}, cloud_save_mode="s3", bucket_name=s3_bucket)
    folder = store.local_path(ef.CHECKPOINT_DIR, "model_epoch_1.pt")
    os.makedirs(folder)
    for name in ("__0_0.distcp", "__1_0.distcp", ".metadata", "loop_state.pt"):
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(name.encode())
    store.publish(folder)
    assert store.flush(timeout=30)
    client = boto3.client("s3", region_name="us-east-1")
    prefix = store.cloud_key(folder) + "/"
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix).get("Contents", []))
    assert keys == sorted(prefix + name for name in ("__0_0.distcp", "__1_0.distcp", ".metadata", "loop_state.pt"))

    store.remove(folder, remove_from_cloud=True)
    assert store.flush(timeout=30)
    assert not os.path.exists(folder)
    assert not client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix).get("Contents")
