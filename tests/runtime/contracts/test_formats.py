"""runtime.contracts.formats.check_format: the one versioned-file check of every reader."""
import pytest

from runtime.contracts.formats import ContractError, check_format


def test_accepts_a_known_version_and_returns_it():
    assert check_format({"format": "x", "version": 2}, "f.json", versions=(1, 2), fmt="x", version_key="version") == 2


@pytest.mark.parametrize("doc, match", [
    ([], "f.json: run is not a JSON object"),
    ({"format": "y", "format_version": 1}, "f.json: run format 'y' is not 'x'"),
    ({"format": "x", "format_version": 3}, r"f.json: run format_version 3 is not supported \(this lineside reads 1, 2\)"),
    ({"format": "x", "format_version": True}, "format_version True is not supported"),  # True == 1, yet no version
    ({"format": "x"}, "format_version None is not supported"),
])
def test_refuses_with_one_line_naming_the_file_and_what_it_reads(doc, match):
    with pytest.raises(ContractError, match=match):
        check_format(doc, "f.json", versions=(1, 2), fmt="x", what="run")


def test_a_reader_raises_the_one_contract_error(tmp_path):
    import json

    from teacher.checkpoint import read_config

    (tmp_path / "config.json").write_text(json.dumps({"format": "nope", "format_version": 1}))
    with pytest.raises(ContractError, match="format 'nope'"):
        read_config(tmp_path)
