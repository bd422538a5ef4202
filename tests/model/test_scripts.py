"""Loading model scripts: shipped ones work, bad ones say exactly what is wrong and where."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

from bus import ConfigError
from sandbox._scripted import ScriptLoadError, load_script, parse_script, resolve_script, shipped_scripts

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_script_loads_and_has_turns() -> None:
    shipped = shipped_scripts()
    assert {"hello", "write-a-file", "multi-step", "runaway", "expensive", "demo"} <= set(shipped)
    for name, path in shipped.items():
        script = load_script(path)
        assert script.name == name
        assert script.turns and script.description


def test_shipped_scripts_are_package_data_of_a_real_package() -> None:
    """A non-editable install includes them: the folder is a package and *.toml is package data."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "sandbox.model_scripts" in find_packages(str(ROOT), include=include)
    assert "*.toml" in pyproject["tool"]["setuptools"]["package-data"]["*"]


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[[turns]]\ntext = "ok"\n\n[[turns]]\ntext = "unterminated\n')
    with pytest.raises(ScriptLoadError) as caught:
        load_script(path)
    message = caught.value.describe()
    assert str(path) in message and "line 5" in message
    assert isinstance(caught.value, ConfigError)


def test_wrong_field_type_names_the_field_path_and_the_turn_line() -> None:
    text = '[[turns]]\ntext = "a"\n\n[[turns]]\ntext = "b"\ndelay_ms = "soon"\n'
    with pytest.raises(ScriptLoadError) as caught:
        parse_script(text, source="s.toml")
    message = str(caught.value)
    assert "$.turns[1].delay_ms" in message and "Expected `int`" in message
    assert "line 4" in message


def test_unknown_field_is_rejected_by_name() -> None:
    with pytest.raises(ScriptLoadError, match=r"unknown field `txet`"):
        parse_script('[[turns]]\ntxet = "typo"\n', source="s.toml")


def test_a_turn_without_any_reply_is_rejected() -> None:
    with pytest.raises(ScriptLoadError, match=r"needs `text`, `tool_use` or `error`.*\$\.turns\[0\]"):
        parse_script("[[turns]]\ndelay_ms = 5\n", source="s.toml")


def test_error_turn_cannot_also_send_text() -> None:
    with pytest.raises(ScriptLoadError, match="cannot also have"):
        parse_script('[[turns]]\ntext = "x"\nerror = { status = 529 }\n', source="s.toml")


def test_error_status_must_be_an_http_error() -> None:
    with pytest.raises(ScriptLoadError, match=r"\$\.turns\[0\]\.error\.status"):
        parse_script("[[turns]]\nerror = { status = 200 }\n", source="s.toml")


def test_json_scripts_load_and_report_json_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"turns": [{"text": "from json"}]}')
    assert load_script(good).turns[0].text == "from json"
    assert load_script(good).name == "good"
    bad = tmp_path / "bad.json"
    bad.write_text('{"turns": [{"text": "x"},]}')
    with pytest.raises(ScriptLoadError, match="invalid JSON"):
        load_script(bad)


def test_unknown_script_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ScriptLoadError) as caught:
        resolve_script("no-such-script")
    assert "write-a-file" in str(caught.value)


def test_missing_script_file_says_it_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ScriptLoadError, match="cannot read"):
        resolve_script(str(tmp_path / "missing.toml"))
