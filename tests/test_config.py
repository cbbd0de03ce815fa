"""One configuration system (:mod:`causal_delta.config`): every CLI option and every ``--set``
reaches the config dataclass with the value and type the user meant."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import subprocess
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import pytest

from causal_delta import cli
from causal_delta.config import (
    add_dataclass_arguments,
    apply_overrides,
    config_to_dict,
    from_namespace,
    option,
    parse_value,
)

# ---------------------------------------------------------------- every option of every command


def _command_parsers():
    """``(label, argv prefix, subparser, config class)`` for every command (and classifier action)."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, module in cli.COMMANDS.items():
        mod = importlib.import_module(f"causal_delta.commands.{module}")
        config = mod.CONFIG
        if isinstance(config, dict):  # a command with actions (classifier train / evaluate)
            inner = next(a for a in sub.choices[name]._actions if isinstance(a, argparse._SubParsersAction))
            for action, cls in config.items():
                yield f"{name} {action}", [name, action], inner.choices[action], cls
        else:
            yield name, [name], sub.choices[name], config


COMMANDS = list(_command_parsers())


def _base_hint(hint):
    """``T`` of ``T | None`` (unchanged otherwise)."""
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _example(hint, default):
    """A non-default ``(text, expected value)`` for an option of type ``hint``, written by hand
    per type (not through the parser under test)."""
    hint = _base_hint(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        value = next(v for v in args if v != default)
        return str(value), value
    if hint is int:
        value = 7 if default != 7 else 8
        return str(value), value
    if hint is float:
        return "0.375", 0.375
    if hint is str:
        return "some-value", "some-value"
    if hint is Path:
        return "a/b.png", Path("a/b.png")
    if hint is dict or origin is dict:
        return '{"k": 1, "s": "x"}', {"k": 1, "s": "x"}
    if origin is tuple and args[-1] is Ellipsis:
        elem = args[0]
        if elem is float:
            return "0.125,0.25", (0.125, 0.25)
        if elem is int:
            return "3,4", (3, 4)
        return "p,q", ("p", "q")
    if origin is tuple:  # fixed length, e.g. (i, j) or AdamW betas
        texts = {int: ("2", 2), float: ("0.5", 0.5)}
        pairs = [texts[a] for a in args]
        return ",".join(t for t, _ in pairs), tuple(v for _, v in pairs)
    if origin is list:
        return "p,q", ["p", "q"]
    raise AssertionError(f"no example for {hint!r}")


def _required_argv(parser, cls) -> list[str]:
    """Values for the required options and positionals, so a parse succeeds."""
    hints = typing.get_type_hints(cls)
    argv = []
    for a in parser._actions:
        if a.option_strings and a.required:
            argv += [a.option_strings[-1], _example(hints[a.dest], None)[0]]
        elif not a.option_strings and a.dest in hints:
            argv.append(a.choices[0] if a.choices else "x")
    for group in parser._mutually_exclusive_groups:  # exactly one of e.g. --checkpoint / --model
        if group.required:
            a = group._group_actions[0]
            argv += [a.option_strings[-1], _example(hints[a.dest], None)[0]]
    return argv


def _rivals(parser, action) -> set[str]:
    """Option strings of the other members of ``action``'s mutually exclusive groups."""
    return {o for g in parser._mutually_exclusive_groups if action in g._group_actions
            for a in g._group_actions if a is not action for o in a.option_strings}


def _options(parser) -> list[argparse.Action]:
    """The options ``--help`` lists (not -h, --debug or hidden deprecated spellings)."""
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
            and a.dest not in ("help", "debug")]


@pytest.mark.parametrize("label, prefix, parser, cls", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_listed_option_reaches_the_config(label, prefix, parser, cls):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    options = _options(parser)
    assert {a.dest for a in options} | {a.dest for a in parser._actions if not a.option_strings} >= {
        f for f in fields if f in hints} - {"help"}, f"{label}: a config field without an option"
    base = _required_argv(parser, cls)
    checked = 0
    for action in options:
        name = action.dest
        assert name in fields, f"{label} {action.option_strings}: no config field {name!r}"
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        hint = hints[name]
        flag = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")][0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv, expected = [f"--no-{flag[2:]}" if default else flag], not default
        elif typing.get_origin(hint) in (typing.Union, __import__("types").UnionType) and bool in typing.get_args(hint):
            argv, expected = [flag], True  # --resume alone
            ns = parser.parse_args([*base, *argv])
            assert getattr(from_namespace(cls, ns), name) is True
            argv, expected = [flag, "run/ckpt"], "run/ckpt"
        elif getattr(action, "repeat", False):  # --set KEY=VALUE, once per item
            argv, expected = [flag, "a=1,2", flag, "b=x"], ("a=1,2", "b=x")
        elif action.choices:
            text = next(c for c in action.choices if c != str(default))
            argv, expected = [flag, text], text
        else:
            text, expected = _example(hint, default)
            argv = [flag, text]
        drop = {flag} | _rivals(parser, action)
        base_here = [t for i, t in enumerate(base) if t not in drop and (i == 0 or base[i - 1] not in drop)]
        config = from_namespace(cls, parser.parse_args([*base_here, *argv]))
        got = getattr(config, name)
        assert got == expected and type(got) is type(expected), f"{label} {argv}: got {got!r}, expected {expected!r}"
        checked += 1
    assert checked == len(options) >= 5


def test_positionals_and_short_options():
    parser = cli.build_parser()
    ns = parser.parse_args(["reproduce", "pixels", "--quick", "--set", "train_steps=3"])
    from causal_delta.commands.reproduce import ReproduceConfig

    c = from_namespace(ReproduceConfig, ns)
    assert (c.experiment, c.quick, c.overrides) == ("pixels", True, ("train_steps=3",))
    from causal_delta.commands.jvp import JvpConfig

    assert from_namespace(JvpConfig, parser.parse_args(["jvp", "--checkpoint", "c", "-n", "9"])).n_samples == 9
    with pytest.raises(SystemExit):  # --features and --classifier exclude each other
        parser.parse_args(["jvp", "--checkpoint", "c", "--features", "0", "--classifier", "k"])


@pytest.mark.parametrize("argv, field, expected", [
    (["jvp", "--checkpoint", "c", "--method", "fd"], "mode", "fd"),
    (["jvp", "--checkpoint", "c", "--n", "5"], "n_samples", 5),
    (["train", "--ema", "0.9"], "ema_decay", 0.9),
    (["sample", "--checkpoint", "c", "--num-samples", "5"], "n_samples", 5),
    (["sample", "--checkpoint", "c", "--grid-png", "g.png"], "png", "g.png"),
])
def test_old_spellings_still_work_and_warn(argv, field, expected):
    parser = cli.build_parser()
    with pytest.warns(FutureWarning, match=rf"{argv[-2]} is deprecated; use --"):
        ns = parser.parse_args(argv)
    assert getattr(ns, field) == expected
    help_text = parser._subparsers._group_actions[0].choices[argv[0]].format_help()
    assert argv[-2] + " " not in help_text  # hidden from --help


def test_a_bad_value_is_an_argparse_error_naming_the_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["jvp", "--checkpoint", "c", "--steps", "ten"])
    assert exc.value.code == 2
    assert "argument --steps: expected an integer, got 'ten'" in capsys.readouterr().err


def test_command_modules_and_configs_import_without_torch():
    code = ("import sys; import causal_delta.config, causal_delta.train_config, causal_delta.cli as c; "
            "[__import__('causal_delta.commands.' + m) for m in c.COMMANDS.values()]; "
            "c.build_parser(); assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- --set key=value, one per type


@dataclasses.dataclass
class Every:
    n: int = option(1)
    x: float = option(0.5)
    name: str = option("a")
    on: bool = option(False)
    path: Path = option(Path("p"))
    maybe: int | None = option(None)
    pick: Literal["fd", "central"] = option("fd")
    floats: tuple[float, ...] = option((0.0,))
    pair: tuple[int, int] = option((0, 1))
    loose: tuple = option(())
    mixed: tuple[int | str, ...] = option(())
    table: dict[str, Any] = option(default_factory=dict)
    resume: bool | str = option(False)


SETS = [
    ("n=10_000", "n", 10000), ("x=1e-3", "x", 1e-3), ("x=2", "x", 2.0), ("name=3", "name", "3"),
    ("on=true", "on", True), ("on=0", "on", False), ("path=runs/x.png", "path", Path("runs/x.png")),
    ("maybe=4", "maybe", 4), ("maybe=none", "maybe", None), ("pick=central", "pick", "central"),
    ("floats=0,0.5,1", "floats", (0.0, 0.5, 1.0)), ("floats=[0.25]", "floats", (0.25,)), ("floats=", "floats", ()),
    ("pair=3,4", "pair", (3, 4)), ("loose=[[\"hidden\", 256]]", "loose", (("hidden", 256),)),
    ("loose=fork,chain", "loose", ("fork", "chain")), ("mixed=3,Shirt", "mixed", (3, "Shirt")),
    ('table={"rho": 0.5}', "table", {"rho": 0.5}), ("resume=yes", "resume", True), ("resume=run/c", "resume", "run/c"),
]


@pytest.mark.parametrize("item, key, expected", SETS, ids=[s[0] for s in SETS])
def test_set_parses_by_the_annotation(item, key, expected):
    got = getattr(apply_overrides(Every(), [item]), key)
    assert got == expected and type(got) is type(expected)
    if isinstance(expected, tuple) and expected:
        assert [type(v) for v in got] == [type(v) for v in expected]


def test_set_round_trips_through_the_report():
    # every field's value, written to report.json and typed back as --set, is the same value
    changed = apply_overrides(Every(), [s[0] for s in SETS if s[1] not in ("name",)])
    text = json.loads(json.dumps(config_to_dict(changed)))
    items = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in text.items()]
    items = [i.replace("=null", "=none") for i in items]
    assert apply_overrides(Every(), items) == changed


@pytest.mark.parametrize("item, match", [
    ("n=1.5", r"--set n: expected an integer, got '1.5'"),
    ("x=abc", r"--set x: expected a number"),
    ("on=maybe", r"--set on: expected true or false"),
    ("pick=forward", r"--set pick: invalid choice 'forward' \(choose from fd, central\)"),
    ("pair=1,2,3", r"--set pair: expected 2 comma-separated values"),
    ("table=[1]", r"--set table: expected a JSON object"),
    ("maybe=x", r"--set maybe: expected an integer or none"),
    ("nope=1", r"--set nope: unknown key for Every; valid keys: floats, loose, maybe, mixed, n, name, on, pair, path, "
               r"pick, resume, table, x$"),
    ("n", r"--set expects KEY=VALUE, got 'n'"),
])
def test_set_errors_name_the_key_and_the_expected_form(item, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(Every(), [item])


def test_parse_value_never_looks_at_the_current_value():
    # the old parser sniffed the current value: a None default swallowed numbers as strings
    assert parse_value(float | None, "0.5") == 0.5
    assert apply_overrides(Every(maybe=None), ["maybe=3"]).maybe == 3


def test_options_of_a_config_work_in_a_plain_parser():
    parser = add_dataclass_arguments(argparse.ArgumentParser(), Every)
    ns = parser.parse_args(["--n", "3", "--on", "--floats", "1,2", "--resume", "--mixed", "2,b"])
    c = from_namespace(Every, ns)
    assert (c.n, c.on, c.floats, c.resume, c.mixed) == (3, True, (1.0, 2.0), True, (2, "b"))


# ---------------------------------------------------------------- reproduce --set


def test_reproduce_all_refuses_a_key_no_experiment_knows(tmp_path, capsys):
    assert cli.main(["reproduce", "all", "--quick", "--out", str(tmp_path / "r"), "--set", "nosuchkey=1"]) == 2
    err = capsys.readouterr().err
    assert "--set nosuchkey: no experiment of 'all' has this setting; valid keys:" in err
    assert "train_steps" in err and "n_probe" in err and "pixel_pair" in err
    # a known key with a bad value stops before any experiment runs
    assert cli.main(["reproduce", "all", "--quick", "--out", str(tmp_path / "r"), "--set", "train_steps=many"]) == 2
    assert "--set train_steps: expected an integer, got 'many'" in capsys.readouterr().err
    assert not (tmp_path / "r" / "gaussian-1d").exists()


def test_reproduce_all_applies_a_key_where_it_exists():
    from causal_delta.commands.reproduce import ReproduceConfig, build_config

    c = ReproduceConfig(experiment="all", quick=True, overrides=("n_probe=77", "train_steps=5"), seed=3)
    g2, g1 = build_config("gaussian-2d", c), build_config("gaussian-1d", c)
    assert (g2.n_probe, g2.train_steps, g2.seed) == (77, 5, 3)
    assert (g1.train_steps, g1.seed) == (5, 3) and not hasattr(g1, "n_probe")
    one = ReproduceConfig(experiment="gaussian-1d", quick=True, overrides=("n_probe=77",))
    with pytest.raises(ValueError, match=r"--set n_probe: unknown key for Gaussian1DConfig; valid keys: .*train_steps"):
        build_config("gaussian-1d", one)
    px = build_config("pixels", ReproduceConfig(experiment="pixels", quick=True, classes="3,Shirt",
                                                 overrides=('overrides=[["base_channels", 16]]',)))
    assert px.classes == (3, "Shirt") and px.overrides == (("base_channels", 16),)


def test_current_spellings_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing else warns while parsing
        cli.build_parser().parse_args(["jvp", "--checkpoint", "c", "--mode", "fd"])


def _as_set_items(config) -> list[str]:
    """Each field of ``config`` as the ``--set key=value`` a user would type from report.json."""
    items = []
    for key, value in config_to_dict(config).items():
        text = "none" if value is None else value if isinstance(value, str) else json.dumps(value)
        items.append(f"{key}={text}")
    return items


@pytest.mark.parametrize("name", ["gaussian-1d", "gaussian-2d", "mixture", "pixels", "attributes", "known-graphs",
                                  "memorisation", "flux"])
def test_every_experiment_setting_round_trips_through_set(name):
    # the report's value of every field, typed back as --set, gives the same config: the
    # annotations describe the values the experiments use (full and quick sizes)
    from causal_delta.experiments import get_experiment

    cls, _ = get_experiment(name)
    for config in (cls.full(), cls.quick()):
        assert apply_overrides(cls.full(), _as_set_items(config)) == config


# Every option string of the release before the configuration system (each must still parse).
PREVIOUS_OPTIONS = {
    "mixture": "--fd-eps --fd-eps-float32 --intervention-label --n-points --no-progress --out --points --quick "
    "--seed --times",
    "train": "--batch-size --checkpoint-every --coupling --data --data-args --device --ema --extend "
    "--grad-clip --keep-checkpoints --lr --lr-schedule --model-args --no-progress --out --pairs "
    "--parametrization --preset --resume --seed --sigma --source --steps --t-sampling --warmup-steps "
    "--weight-decay",
    "sample": "--batch-size --checkpoint --device --grid-png --no-ema --num-samples --out --png --seed --solver "
    "--steps -n",
    "jvp": "--batch-size --checkpoint --classifier --dtype --eps --features --method --n --no-ema "
    "--no-normalize --out --probe-kind --probes --save-samples --seed --solver --steps -n",
    "dependence": "--condition-on --interval --level --n-boot --out --pair --quantile --quantiles --responses "
    "--seed --threshold",
    "graph": "--alpha --attributes --batch-size --checkpoint --classifier --depth --dtype --estimator --labels "
    "--n-boot --n-samples --no-ema --out --probes --quantile --seed --solver --steps --test",
    "diagnose": "--bandwidth --checkpoint --grad-samples --heldout --jacobian-k --jacobian-points --n-fresh "
    "--no-ema --no-progress --out --seed --sigma --solver --steps --t-grid --train-data",
    "reproduce": "--celeba-root --classes --data-root --dataset --no-progress --out --quick --seed --set --threads",
    "classifier train": "--arch --attributes --batch-size --celeba-root --checkpoint-every --data --device "
    "--eval-limit "
    "--head --holdout --image-size --limit --lr --lr-schedule --no-progress --out --resume --seed "
    "--steps --weight-decay --weights",
    "classifier evaluate": "--attributes --celeba-root --classifier --data --device --limit --out --split",
}


@pytest.mark.parametrize("command", sorted(PREVIOUS_OPTIONS))
def test_every_previous_option_is_still_accepted(command):
    parser = cli.build_parser()
    for word in command.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    known = {o for a in parser._actions for o in a.option_strings}
    assert set(PREVIOUS_OPTIONS[command].split()) <= known


def test_a_report_records_the_settings_the_run_used(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", responses=rng.normal(size=(40, 3)))
    out = tmp_path / "dep"
    assert cli.main(["dependence", "--responses", str(tmp_path / "r.npz"), "--n-boot", "20", "--interval", "percentile",
                     "--condition-on", "0", "--quantiles", "1,0.5", "--out", str(out)]) == 0
    config = json.loads((out / "report.json").read_text())["config"]
    assert config == {"responses": str(tmp_path / "r.npz"), "n_boot": 20, "level": 0.95, "seed": 0,
                      "interval": "percentile", "condition_on": 0, "quantile": None, "threshold": None, "pair": None,
                      "quantiles": [1.0, 0.5], "out": str(out)}
