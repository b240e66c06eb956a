"""vggbn.storage.model_files: the model files params name, listed by content, each hashed once per change."""

import os

import pytest

from vggbn.storage.hashing import file_md5
from vggbn.storage.model_files import ModelFileError, list_model_files, named_files


def test_only_params_that_name_files_are_listed():
    assert named_files("demo", None) == {}
    assert named_files("vgg16", "imagenet") == {} and named_files("vgg16", "none") == {}
    assert named_files("vgg16", "w.h5") == {"model.weights": "w.h5"}
    assert named_files("my.keras", None) == {"model.source": "my.keras"}


def test_a_file_is_hashed_once_per_change_and_listed_by_content(tmp_path):
    model, out, memo = tmp_path / "m.keras", tmp_path / "listing.tsv", tmp_path / "work/hashes.json"
    model.write_bytes(b"weights one")
    assert list_model_files(source=str(model), weights=None, out=out, hashes=memo) == {
        "files": 1, "hashed": 1, "reused": 0}
    first = out.read_bytes()
    assert first.decode().splitlines() == ["key\tpath\tsize\tmd5", f"model.source\t{model}\t11\t{file_md5(model)}"]
    assert list_model_files(source=str(model), weights=None, out=out, hashes=memo)["hashed"] == 0
    assert out.read_bytes() == first  # byte-identical: nothing downstream reruns
    # Other bytes, same size and modification time, same inode: the memo is what answers (not a second read);
    # DVC's own state trusts the same stat
    stamp = model.stat()
    with open(model, "r+b") as file:
        file.write(b"W")
    os.utime(model, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert list_model_files(source=str(model), weights=None, out=out, hashes=memo)["hashed"] == 0
    assert out.read_bytes() == first
    model.write_bytes(b"weights two")  # retrained in place: a new modification time
    os.utime(model, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))
    assert list_model_files(source=str(model), weights=None, out=out, hashes=memo)["hashed"] == 1
    assert file_md5(model) in out.read_text() and out.read_bytes() != first
    memo.write_text("{not json")  # a damaged memo: hashed again, no error
    assert list_model_files(source=str(model), weights=None, out=out, hashes=memo)["hashed"] == 1


def test_a_missing_file_is_one_line_naming_it_and_the_key(tmp_path):
    with pytest.raises(ModelFileError, match=r"^.*gone\.keras: model\.source names no readable file \(No such file"):
        list_model_files(source=str(tmp_path / "gone.keras"), weights=None, out=tmp_path / "o.tsv",
                         hashes=tmp_path / "h.json")
