"""The package imports cleanly, exposes its public API and its CLI answers --help/--version."""

import importlib
import subprocess
import sys

import pytest

import causal_delta
from causal_delta import cli


def test_version_and_lazy_submodules():
    assert causal_delta.__version__
    for name in causal_delta._SUBMODULES:
        mod = getattr(causal_delta, name)
        assert mod.__name__ == f"causal_delta.{name}"
        for public in getattr(mod, "__all__", []):
            assert hasattr(mod, public), f"{mod.__name__}.__all__ names missing {public!r}"


def test_public_api_fits_one_screen_and_resolves():
    """Every top-level name is its module's own object, listed in that module's ``__all__``."""
    assert len(causal_delta._API) <= 30
    for name, module in causal_delta._API.items():
        mod = importlib.import_module(f"causal_delta.{module}")
        assert name in mod.__all__ and getattr(causal_delta, name) is getattr(mod, name), name
    assert set(causal_delta.__all__) == {"__version__", *causal_delta._API, *causal_delta._SUBMODULES}


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        causal_delta.nope  # noqa: B018


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_registered_command_exists(name):
    mod = importlib.import_module(f"causal_delta.commands.{cli.COMMANDS[name]}")
    assert mod.HELP and callable(mod.add_arguments) and callable(mod.run)


def test_cli_help_and_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert causal_delta.__version__ in capsys.readouterr().out
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_console_script_help_is_fast_and_imports_no_torch():
    code = "import sys; from causal_delta import cli; cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
