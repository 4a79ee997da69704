"""Checkpoint manifests (moe/checkpoint/manifest.py) on real files: the ranks' shares cover every file once, and a
missing, truncated or corrupted file is named. The save and resume paths that use them run in
tests/launch/test_launcher.py (a corrupted checkpoint, a save into a full file-size limit)."""

import json

from moe.checkpoint.manifest import MANIFEST, first_bad_file, hash_share, sha256_of, tag_files, write_manifest


def a_tag(tmp_path):
    tag = tmp_path / "global_step4"
    (tag / "sub").mkdir(parents=True)
    for i in range(5):
        (tag / f"shard_{i}.pt").write_bytes(bytes(range(256)) * (i + 1))
    (tag / "sub" / "nested.json").write_text("{}")
    (tag / "COMPLETE").write_text("")
    return tag


def test_shares_of_the_ranks_list_every_file_once_with_size_and_sha256(tmp_path):
    tag = a_tag(tmp_path)
    shares = [hash_share(tag, rank, 3) for rank in range(3)]
    assert sum(len(s) for s in shares) == 6 and "COMPLETE" not in tag_files(tag)
    write_manifest(tag, shares)
    files = json.loads((tag / MANIFEST).read_text())["files"]
    assert sorted(files) == tag_files(tag) == sorted(set().union(*shares))
    assert files["shard_2.pt"] == {"bytes": 768, "sha256": sha256_of(tag / "shard_2.pt")}
    assert all(first_bad_file(tag, rank, 2) is None for rank in range(2))


def test_a_missing_truncated_or_flipped_file_is_named_by_the_rank_that_checks_it(tmp_path):
    tag = a_tag(tmp_path)
    write_manifest(tag, [hash_share(tag, 0, 1)])
    data = bytearray((tag / "shard_3.pt").read_bytes())
    data[100] ^= 1
    (tag / "shard_3.pt").write_bytes(data)  # same size, one bit flipped
    owner = sorted(tag_files(tag)).index("shard_3.pt") % 2
    assert "shard_3.pt does not match its sha256" in first_bad_file(tag, owner, 2)
    assert first_bad_file(tag, 1 - owner, 2) is None  # the other rank's share is intact
    assert first_bad_file(tag, owner, 2, full=False) is None  # a size check alone cannot see a flipped bit
    (tag / "shard_1.pt").write_bytes(b"x" * 10)
    assert "shard_1.pt has 10 bytes, the manifest 512 (truncated?)" in first_bad_file(tag, full=False)
    (tag / "sub" / "nested.json").unlink()
    (tag / "shard_1.pt").write_bytes(bytes(range(256)) * 2)
    (tag / "shard_3.pt").write_bytes(bytes(range(256)) * 4)
    assert first_bad_file(tag).endswith("nested.json is missing")


def test_a_tag_without_a_manifest_is_trusted_and_a_broken_manifest_is_not(tmp_path):
    tag = a_tag(tmp_path)
    assert first_bad_file(tag) is None  # saved before manifests existed
    (tag / MANIFEST).write_text("{trunc")
    assert "not a readable manifest" in first_bad_file(tag)
