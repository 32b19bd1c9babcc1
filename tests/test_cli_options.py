"""Each default lives in one place: the CLI options are generated from the config
dataclasses, and this checks every field has its option with the same default, choices and range."""

from __future__ import annotations

import dataclasses

import click
import pytest

from edgetl.cli.host import cli
from edgetl.exporter import ExportConfig
from edgetl.transfer.config import FinetuneConfig


@pytest.mark.parametrize("command, cls", [("finetune", FinetuneConfig), ("export", ExportConfig)])
def test_options_match_the_config_dataclass(command, cls):
    params = {p.name: p for p in cli.commands[command].params}
    for f in dataclasses.fields(cls):
        assert f.name in params, f"--{f.name.replace('_', '-')} is missing from `edgetl {command}`"
        param = params[f.name]
        assert param.default == f.default, f.name
        if f.metadata.get("choices"):
            assert list(param.type.choices) == list(f.metadata["choices"]), f.name
        if f.metadata.get("lo") is not None and isinstance(param.type, click.IntRange):
            assert (param.type.min, param.type.max) == (f.metadata["lo"], f.metadata["hi"]), f.name


def test_float_options_refuse_nan_and_out_of_range():
    from click.testing import CliRunner

    runner = CliRunner()
    for value in ("nan", "inf", "-1", "x"):
        result = runner.invoke(cli, ["finetune", "data", "--out", "o", "--dropout", value])
        assert result.exit_code == 2 and "--dropout" in result.output, value


def test_api_names_the_unknown_parameter(tmp_path):
    import edgetl
    from edgetl.errors import EdgetlError

    with pytest.raises(EdgetlError, match="finetune has no option 'learning_rate'.*lr"):
        edgetl.finetune(tmp_path, tmp_path / "run", learning_rate=0.1)
