"""Run configs: any command's options from a YAML file, validated by a pydantic model that is built
from the command's own argparse definition (types, choices, required, nargs → list), so no verb
needs a hand-written schema. Explicit command-line flags override the file; every run directory
gets the fully resolved ``config.yaml``, which ``gkt <verb> --config RUN_DIR/config.yaml`` re-runs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticCustomError

from gkt.core.errors import GktError
from gkt.core.io import atomic_path, read_json
from gkt.core.limits import load_yaml, read_text_input

CONFIG_OPTION = "config"

# Threads or processes one option may ask for.
MAX_PARALLEL = 1024


# Namespace entry naming the options the user gave (command line or --config file), e.g. for --resume.
GIVEN = "given_options"


# Namespace entries that are not options of the command (set by the CLI itself).
INTERNAL = ("command", "verb", "action", "torch_device", "run_dir", "dist", CONFIG_OPTION, GIVEN)


# The allowed range of every numeric option, by its name in any verb (one place for command line and
# config files): a value outside it is refused before anything runs.
OPTION_RULES: dict[str, Any] = {
    **dict.fromkeys(("epochs", "ft_epochs", "pretrain_epochs", "finetune_epochs", "per_class",
                     "finetune_per_class", "threads", "workers", "img_size"), Field(ge=1)),
    **dict.fromkeys(("batch_size", "ft_batch_size"), Field(ge=1)),
    **dict.fromkeys(("lr", "ft_lr", "temperature", "kd_temperature", "pts_temperature"), Field(gt=0)),
    **dict.fromkeys(("fraction", "ft_fraction"), Field(gt=0, le=1)),
    **dict.fromkeys(("weight_decay", "l2", "loss_w", "pts_power", "loader_workers"), Field(ge=0)),
    # NumPy, torch and the run's hashes take seeds from 0 to 2**32 - 1
    **dict.fromkeys(("seed", "seeds", "headroom_seeds"), Field(ge=0, le=2**32 - 1)),
}

# Options counting the threads or processes a command starts: a typo must not start a million of them.
PARALLEL_OPTIONS = ("threads", "workers", "loader_workers")

# The largest value of any integer option (what torch's and the C libraries' int arguments hold).
MAX_INT = 2**31 - 1


SCALARS: dict[Any, type] = {None: str, str: str, int: int, float: float}


def verb_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every leaf parser below ``parser``, keyed by its ``command`` default (e.g. ``"zoo build"``)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                command = sub._defaults.get("command")
                found |= {command: sub} if command else verb_parsers(sub)
    return found


def option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's actions that are config fields (no help, version or --config)."""
    return [a for a in parser._actions if a.dest not in (argparse.SUPPRESS, "help", CONFIG_OPTION)
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))]


def _as_list(value: Any) -> Any:
    return value if isinstance(value, (list, tuple)) or value is None else [value]


def _not_blank(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("blank", "an empty value names nothing; give one, or leave the option out")
    return value


def _field_type(action: argparse.Action) -> Any:
    """The pydantic type of one argparse action."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return bool
    if isinstance(action, argparse._StoreConstAction):
        return Any
    scalar: Any = SCALARS.get(action.type)
    if scalar is None:  # a custom type callable: convert strings the way argparse would
        scalar = Annotated[Any, BeforeValidator(lambda v, t=action.type: t(v) if isinstance(v, str) else v)]
    if action.choices is not None:
        scalar = Literal[tuple(action.choices)]
    if scalar is str and action.option_strings:  # `--out ''` would be the current directory
        scalar = Annotated[str, BeforeValidator(_not_blank)]
    if scalar is int:  # every integer option within what the libraries' C ints hold
        scalar = Annotated[int, Field(le=MAX_INT)]
    if action.dest in OPTION_RULES:
        scalar = Annotated[scalar, OPTION_RULES[action.dest]]
    if action.dest in PARALLEL_OPTIONS:
        scalar = Annotated[scalar, Field(le=MAX_PARALLEL)]
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or isinstance(action.nargs, int)
    return Annotated[list[scalar], BeforeValidator(_as_list)] if many else scalar


def config_model(parser: argparse.ArgumentParser, name: str) -> type[BaseModel]:
    """A pydantic model of ``parser``'s options: required options are required fields, the others
    default to argparse's defaults; unknown keys are rejected."""
    fields: dict[str, Any] = {}
    for action in option_actions(parser):
        kind = _field_type(action)
        if action.required:
            fields[action.dest] = (kind, ...)
        else:
            fields[action.dest] = (Optional[kind], action.default)  # noqa: UP045 (kind may be a typing form)
    return create_model(f"{name.title().replace(' ', '')}Config",
                        __config__=ConfigDict(extra="forbid", coerce_numbers_to_str=True,
                                              allow_inf_nan=False),
                        **fields)


def _key_map(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Accepted spellings (dest, long flag names with dashes or underscores) → dest."""
    keys = {}
    for action in option_actions(parser):
        for name in (action.dest, *(o[2:] for o in action.option_strings if o.startswith("--"))):
            keys[name] = keys[name.replace("-", "_")] = keys[name.replace("_", "-")] = action.dest
    return keys


def _describe(error: dict[str, Any], flags: dict[str, str]) -> str:
    """One validation error, naming the command-line flag when the value came from one (``flags``)."""
    loc = [str(p) for p in error["loc"]]
    field = f"{flags[loc[0]]}" if loc and loc[0] in flags else "field '" + (".".join(loc) or "(config)") + "'"
    message = error["msg"][:1].lower() + error["msg"][1:]
    got = "" if error["type"] == "missing" else f", got {error['input']!r}"
    return f"{field}: {message}{got}"


def validate_config(parser: argparse.ArgumentParser, command: str, values: dict[str, Any],
                    flags: dict[str, str] | None = None) -> dict[str, Any]:
    """Validate ``values`` (keys with dashes or underscores) against ``parser``'s options and their
    :data:`OPTION_RULES`; returns every option with defaults filled in. Errors name the bad field (or its
    flag, for the options in ``flags``: dest → ``--flag``)."""
    keys = _key_map(parser)
    unknown = sorted(str(k) for k in values if k not in keys)
    if unknown:
        accepted = ", ".join(sorted({a.dest for a in option_actions(parser)}))
        raise GktError(f"{command} config: unknown field(s) {', '.join(unknown)}; accepted: {accepted}")
    normalised = {keys[k]: v for k, v in values.items()}
    try:
        return config_model(parser, command)(**normalised).model_dump()
    except ValidationError as exc:
        errors = [_describe(e, flags or {}) for e in exc.errors()]
        where = f"{command} config" if not flags or any(e.startswith("field ") for e in errors) else command
        raise GktError(f"{where}: " + "; ".join(errors) + " (see `gkt " + command + " --help`)") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (a clear error for a missing file, bad YAML or a non-mapping)."""
    path = Path(path)
    text = read_text_input(path, "--config")
    try:
        values = load_yaml(text, f"--config {path}")
    except yaml.YAMLError as exc:
        raise GktError(f"--config {path}: not valid YAML ({exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise GktError(f"--config {path}: expected a mapping of option: value, got {type(values).__name__}")
    return values


def _explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` keeping only what was given on the command line: the verbs' defaults are
    suppressed and their required options relaxed for this one parse, then restored."""
    saved = [(a, a.default, a.required) for sub in verb_parsers(parser).values() for a in option_actions(sub)]
    for action, _, _ in saved:
        action.default, action.required = argparse.SUPPRESS, False
    try:
        return parser.parse_args(argv)
    finally:
        for action, default, required in saved:
            action.default, action.required = default, required


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args`` with ``--config FILE`` (the file's options under the explicit flags), every
    option validated against the same rules whether it came from the command line or the file. The
    namespace's :data:`GIVEN` lists the options the user set (flag or file)."""
    explicit = _explicit_options(parser, argv)
    path = getattr(explicit, CONFIG_OPTION, None)
    command = explicit.command
    values: dict[str, Any] = {}
    if path is None:
        parser.parse_args(argv)  # argparse's own messages for missing required options
    else:
        values = load_config_file(path)
        written_for = values.pop("command", command)
        if written_for != command:
            raise GktError(f"--config {path} is a `gkt {written_for}` config, not `gkt {command}`")
    sub = verb_parsers(parser)[command]
    actions = {a.dest: a for a in option_actions(sub)}
    given = {k: v for k, v in vars(explicit).items() if k in actions}
    flags = {k: max(actions[k].option_strings, key=len) for k in given if actions[k].option_strings}
    resolved = validate_config(sub, command, {**values, **given}, flags)
    keys = _key_map(sub)
    chosen = sorted({keys[k] for k in values if k in keys} | set(given))
    return argparse.Namespace(**{**vars(explicit), **resolved, CONFIG_OPTION: None if path is None else str(path),
                                 GIVEN: chosen})


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's fully resolved config: ``command`` and every option of the command."""
    return {"command": args.command,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k not in INTERNAL}}


def write_config(path: str | Path, config: dict[str, Any]) -> None:
    """Write ``config`` as YAML, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(_shown, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, config: Any,
                      field: str | None = None, help: str = "", **kwargs: Any) -> argparse.Action:
    """``flag`` (e.g. ``--batch-size``) defaulting to ``config.<field>``, the value of a config dataclass (the
    one place defaults live), typed like it, with "(default: VALUE)" appended to ``help``. ``field`` defaults
    to the flag's name; a tuple value makes a list option (``nargs="*"`` unless given); a None value (decided
    at run time) needs ``type`` and a help that says how it is decided."""
    value = getattr(config, field or flag.removeprefix("--").replace("-", "_"))
    if isinstance(value, tuple):
        kwargs.setdefault("nargs", "*")
        kwargs.setdefault("type", type(value[0]) if value else str)
    elif value is None:  # "decided later": the help must say how, and the type cannot be inferred
        if "type" not in kwargs and "choices" not in kwargs:
            raise TypeError(f"{flag}: its config default is None; give type=")
        return parser.add_argument(flag, default=None, help=help, **kwargs)
    elif "choices" not in kwargs:
        kwargs.setdefault("type", type(value))
    suffix = f"(default: {_shown(value)})"
    return parser.add_argument(flag, default=list(value) if isinstance(value, tuple) else value,
                               help=f"{help} {suffix}" if help else suffix, **kwargs)


def take_run_options(args: argparse.Namespace, command: str, options: Sequence[str]) -> Path:
    """``--resume RUN_DIR``: set ``options`` (and ``epochs``, unless given now: a run may be extended) to the
    interrupted ``command`` run's, from its ``config.json``; an option given now that differs from the run's
    is an error naming it. Returns the run directory."""
    old = Path(args.resume)
    if not (old / "config.json").is_file():
        raise GktError(f"--resume {old}: not a run directory (no config.json)")
    try:
        config = read_json(old / "config.json")
        if not isinstance(config, dict) or config.get("command") != command:
            raise GktError(f"--resume {old}: a `{config.get('command') if isinstance(config, dict) else '?'}` "
                           f"run, not a `{command}` run")
        previous = {key: config[key] for key in (*options, "epochs")}
    except (ValueError, KeyError) as exc:
        raise GktError(f"--resume {old}: its config.json is damaged ({type(exc).__name__}: {exc}); start a new run "
                       "instead") from None
    given = set(getattr(args, GIVEN, ()))
    conflicts = [f"--{key.replace('_', '-')} {_shown(getattr(args, key))} ("
                 + ("the run left it to its default" if previous[key] is None else f"the run used {_shown(previous[key])}")
                 + ")" for key in options if key in given and _shown(getattr(args, key)) != _shown(previous[key])]
    if conflicts:
        raise GktError(f"--resume {old} continues that run with its own options, but you gave {'; '.join(conflicts)}; "
                       "drop them, or start a new run instead of resuming")
    for key in options:
        setattr(args, key, previous[key])
    if "epochs" not in given or args.epochs is None:
        args.epochs = previous["epochs"]
    return old

