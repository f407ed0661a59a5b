"""`stepbuild completion bash|zsh|fish`: a shell completion script made from the argparse parser.

The parser is read into a small model (`Command`, `Option`: names, whether an option takes a
value, its choices, what kind of word a value or positional argument is), and each shell's
script is written from the model, so a new flag or command completes without anyone editing
a script. Kinds of words: "file" and "dir" complete paths, "image" the names `stepbuild
images` lists (run, push, inspect, history, rmi, tag, export, why), "" nothing.

Install:  bash: `source <(stepbuild completion bash)` (e.g. in ~/.bashrc);
zsh: `stepbuild completion zsh > "${fpath[1]}/_stepbuild"`;
fish: `stepbuild completion fish > ~/.config/fish/completions/stepbuild.fish`.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

SHELLS = ("bash", "zsh", "fish")
PROG = "stepbuild"
# Option values that are paths (by argparse dest), and positionals by dest.
_FILE_DESTS = frozenset({"file", "input", "authfile", "ca_file", "iidfile", "metadata_file",
                         "build_arg_file"})
_DIR_DESTS = frozenset({"root", "context"})
_IMAGE_COMMANDS = frozenset({"run", "push", "inspect", "history", "rmi", "tag", "export",
                             "why"})
_WORDS = re.compile(r"[a-z][a-z0-9.-]*(\|[a-z][a-z0-9.-]*)+")  # metavar "missing|always|never"


@dataclass(frozen=True, slots=True)
class Option:
    names: tuple[str, ...]  # "-f", "--file"
    help: str
    takes_value: bool
    repeatable: bool
    choices: tuple[str, ...] = ()
    kind: str = ""  # of its value: "file", "dir" or ""


@dataclass(frozen=True, slots=True)
class Word:
    """A positional argument: its kind ("file", "dir", "image", "") or its choices."""

    kind: str = ""
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # "" for the top level
    help: str
    options: tuple[Option, ...]
    positionals: tuple[Word, ...]  # in order
    rest: str | None = None  # the kind of every word after them (run's COMMAND), or None


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    top, commands = model(parser)
    render = {"bash": bash, "zsh": zsh, "fish": fish}[shell]
    return render(top, commands)


# --- the model ----------------------------------------------------------------------------------


def model(parser: argparse.ArgumentParser) -> tuple[Command, list[Command]]:
    """The top level (its options) and every command, as the parser defines them."""
    subcommands: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            subcommands += [_command(name, helps.get(name, ""), sub)
                            for name, sub in action.choices.items()]
    return _command("", parser.description or "", parser), subcommands


def _command(name: str, helptext: str, parser: argparse.ArgumentParser) -> Command:
    options: list[Option] = []
    positionals: list[Word] = []
    rest = None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            options.append(_option(action))
        elif action.nargs == argparse.REMAINDER:
            rest = "file"
        else:
            positionals.append(_positional(name, action))
    return Command(name, _one_line(helptext), tuple(options), tuple(positionals), rest)


def _option(action: argparse.Action) -> Option:
    takes_value = action.nargs != 0
    choices: tuple[str, ...] = ()
    if action.choices is not None:
        choices = tuple(str(c) for c in action.choices)
    elif isinstance(action.metavar, str) and _WORDS.fullmatch(action.metavar):
        choices = tuple(action.metavar.split("|"))
    elif action.metavar == "BOOL":
        choices = ("true", "false")
    kind = ("dir" if action.dest in _DIR_DESTS else
            "file" if action.dest in _FILE_DESTS else "")
    return Option(tuple(action.option_strings), _one_line(action.help or ""), takes_value,
                  isinstance(action, argparse._AppendAction), choices,
                  kind if takes_value else "")


def _positional(command: str, action: argparse.Action) -> Word:
    if action.choices is not None:
        return Word(choices=tuple(str(c) for c in action.choices))
    if action.dest in _DIR_DESTS:
        return Word("dir")
    if action.dest == "image" and command in _IMAGE_COMMANDS:
        return Word("image")
    return Word()


def _one_line(text: str) -> str:
    """A help text's first clause, short enough for a menu."""
    text = " ".join(text.split()).replace("%%", "%")
    text = re.split(r"(?<=[.;:])\s|\s\(", text, maxsplit=1)[0].rstrip(".;:")
    return text if len(text) <= 70 else text[:67] + "..."


# --- bash ---------------------------------------------------------------------------------------

_BASH_HEAD = """\
# bash completion for stepbuild; made by `stepbuild completion bash`.
# Load it with: source <(stepbuild completion bash)

_stepbuild_images() {
    # the NAME column (the first) of each row after the header
    stepbuild images 2>/dev/null | { read -r _; while IFS=$' \\t' read -r name _; do
        printf '%s\\n' "$name"; done; }
}

# Complete a word of kind $1 (file, dir, image, or words in $2) from the prefix $cur.
_stepbuild_reply() {
    local IFS=$'\\n'
    case "$1" in
        file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
        dir) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur")) ;;
        image)
            # bash splits words at ':' (COMP_WORDBREAKS): match the whole word typed so
            # far, then give back only what follows its last ':'.
            local line=${COMP_LINE:0:COMP_POINT} whole prefix
            whole=${line##*[[:space:]]}
            COMPREPLY=($(compgen -W "$(_stepbuild_images)" -- "$whole"))
            if [[ $whole == *:* && $COMP_WORDBREAKS == *:* ]]; then
                prefix=${whole%"${whole##*:}"}
                COMPREPLY=("${COMPREPLY[@]#"$prefix"}")
            fi ;;
        words) IFS=$' \t\n'; COMPREPLY=($(compgen -W "$2" -- "$cur")) ;;
        *) COMPREPLY=() ;;
    esac
}
"""

_BASH_MAIN = """\
_stepbuild() {
    local cur=${COMP_WORDS[COMP_CWORD]} cmd="" npos=0 skip=0 i word opt=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if ((skip)); then skip=0; continue; fi
        if [[ $word == "=" ]]; then skip=1; continue; fi  # --opt = value (split at '=')
        if [[ -n $cmd ]] && _stepbuild_rest "$cmd" "$npos"; then ((npos++)); continue; fi
        if [[ $word == -* ]]; then
            if [[ ${COMP_WORDS[i+1]} != "=" ]] && _stepbuild_takes_value "$cmd" "$word"; then
                skip=1
            fi
            continue
        fi
        if [[ -z $cmd ]]; then cmd=$word; else ((npos++)); fi
    done
    if [[ $cur == "=" ]]; then
        opt=${COMP_WORDS[COMP_CWORD-1]}; cur=""
    elif ((COMP_CWORD > 1)) && [[ ${COMP_WORDS[COMP_CWORD-1]} == "=" ]]; then
        opt=${COMP_WORDS[COMP_CWORD-2]}
    elif ((COMP_CWORD > 1)) && [[ $skip == 1 ]]; then
        opt=${COMP_WORDS[COMP_CWORD-1]}
    fi
    if [[ -n $opt ]]; then
        _stepbuild_value "$cmd" "$opt"
    elif [[ -n $cmd ]] && _stepbuild_rest "$cmd" "$npos"; then
        _stepbuild_positional "$cmd" "$npos"
    elif [[ $cur == -* ]]; then
        _stepbuild_reply words "$(_stepbuild_options "$cmd")"
    elif [[ -z $cmd ]]; then
        _stepbuild_reply words "%(commands)s"
    else
        _stepbuild_positional "$cmd" "$npos"
    fi
}
complete -F _stepbuild stepbuild
"""


def bash(top: Command, commands: list[Command]) -> str:
    everything = [top, *commands]
    takes = [f'"{c.name} {n}"' for c in everything for o in c.options if o.takes_value
             for n in o.names]
    values = []
    for command in everything:
        for option in (o for o in command.options if o.takes_value):
            pattern = "|".join(f'"{command.name} {n}"' for n in option.names)
            values.append(f"        {pattern}) {_bash_kind(option.kind, option.choices)} ;;")
    options = [f'        "{c.name}") echo "{" ".join(n for o in c.options for n in o.names)}" ;;'
               for c in everything]
    positional, rest = [], []
    for command in commands:
        cases = [f"{i}) {_bash_kind(word.kind, word.choices)} ;;"
                 for i, word in enumerate(command.positionals)]
        if command.rest is not None:
            cases.append(f"*) {_bash_kind(command.rest)} ;;")
            count = len(command.positionals)
            rest.append(f'        "{command.name}") (($2 >= {count})) && return 0 ;;')
        if cases:
            positional.append(f'        "{command.name}") case "$2" in '
                              f'{" ".join(cases)} *) COMPREPLY=() ;; esac ;;')
    parts = [
        _BASH_HEAD,
        "_stepbuild_takes_value() {\n    case \"$1 $2\" in\n"
        f"        {'|'.join(takes)}) return 0 ;;\n    esac\n    return 1\n}}\n",
        "# After its positionals, run takes any words (the command): no more options then.\n"
        "_stepbuild_rest() {\n    case \"$1\" in\n" + "\n".join(rest) +
        "\n    esac\n    return 1\n}\n",
        "_stepbuild_value() {\n    case \"$1 $2\" in\n" + "\n".join(values) +
        "\n        *) COMPREPLY=() ;;\n    esac\n}\n",
        "_stepbuild_options() {\n    case \"$1\" in\n" + "\n".join(options) +
        "\n    esac\n}\n",
        "_stepbuild_positional() {\n    case \"$1\" in\n" + "\n".join(positional) +
        "\n        *) COMPREPLY=() ;;\n    esac\n}\n",
        _BASH_MAIN % {"commands": " ".join(c.name for c in commands)},
    ]
    return "\n".join(parts)


def _bash_kind(kind: str, choices: tuple[str, ...] = ()) -> str:
    if choices:
        return f'_stepbuild_reply words "{" ".join(choices)}"'
    return f"_stepbuild_reply {kind or 'none'}"


# --- zsh ----------------------------------------------------------------------------------------


def zsh(top: Command, commands: list[Command]) -> str:
    described = "\n".join(f"    {_zsh_quote(c.name + ':' + c.help)}" for c in commands)
    cases = []
    for command in commands:
        specs = [_zsh_option(o) for o in command.options]
        specs += [f"'{i + 1}:{word.kind or 'argument'}:{_zsh_action(word.kind, word.choices)}'"
                  for i, word in enumerate(command.positionals)]
        if command.rest is not None:
            specs.append(f"'*::command:{_zsh_action(command.rest)}'")
        body = " \\\n        ".join(specs)
        cases.append(f"    ({command.name})\n      _arguments -s \\\n        {body}\n      ;;")
    top_specs = " \\\n    ".join([_zsh_option(o) for o in top.options]
                                 + ["'1: :->command'", "'*:: :->argument'"])
    return f"""\
#compdef stepbuild
# zsh completion for stepbuild; made by `stepbuild completion zsh`.
# Install it with: stepbuild completion zsh > "${{fpath[1]}}/_stepbuild"

_stepbuild_images() {{
  local -a images
  images=(${{(f)"$(stepbuild images 2>/dev/null | awk 'NR > 1 {{print $1}}')"}})
  compadd -a images
}}

_stepbuild_command() {{
  local -a commands
  commands=(
{described}
  )
  _describe -t commands 'stepbuild command' commands
}}

_stepbuild() {{
  local curcontext=$curcontext state line ret=1
  typeset -A opt_args
  _arguments -C \\
    {top_specs} && ret=0
  case $state in
    command) _stepbuild_command && ret=0 ;;
    argument)
      curcontext=${{curcontext%:*:*}}:stepbuild-$words[1]:
      case $words[1] in
{chr(10).join(cases)}
      esac && ret=0
      ;;
  esac
  return ret
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _stepbuild "$@"
else
  compdef _stepbuild stepbuild
fi
"""


def _zsh_option(option: Option) -> str:
    text = option.help.replace("\\", "\\\\").replace("[", "(").replace("]", ")")
    names = option.names
    value = ""
    if option.takes_value:
        # --opt=VALUE or --opt VALUE; -o VALUE or -oVALUE (argparse takes all four)
        names = tuple(n + ("=" if n.startswith("--") else "+") for n in option.names)
        value = f":{option.names[-1].lstrip('-')}:{_zsh_action(option.kind, option.choices)}"
    if option.names[-1] in ("--help", "--version"):
        head = "(- *)"  # nothing else after these
    elif option.repeatable:
        head = "*"
    else:
        head = f"({' '.join(option.names)})" if len(option.names) > 1 else ""
    if len(names) == 1:
        return _zsh_quote(f"{head}{names[0]}[{text}]{value}")
    return _zsh_quote(head) + "{" + ",".join(names) + "}" + _zsh_quote(f"[{text}]{value}")


def _zsh_action(kind: str, choices: tuple[str, ...] = ()) -> str:
    if choices:
        return f"({' '.join(choices)})"
    return {"file": "_files", "dir": "_files -/", "image": "_stepbuild_images"}.get(kind, " ")


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# --- fish ---------------------------------------------------------------------------------------


def fish(top: Command, commands: list[Command]) -> str:
    lines = [
        "# fish completion for stepbuild; made by `stepbuild completion fish`.",
        "# Install it with: stepbuild completion fish > ~/.config/fish/completions/stepbuild.fish",
        "",
        "function __stepbuild_images",
        "    stepbuild images 2>/dev/null | tail -n +2 | string replace -r '\\s.*' ''",
        "end",
        "",
        "complete -c stepbuild -f",
    ]
    lines += _fish_options("__fish_use_subcommand", top.options)
    for command in commands:
        lines.append(f"complete -c stepbuild -n __fish_use_subcommand -a {command.name}"
                     f" -d {_fish_quote(command.help)}")
    for command in commands:
        condition = f"'__fish_seen_subcommand_from {command.name}'"
        lines += _fish_options(condition, command.options)
        kinds = {w.kind for w in command.positionals if w.kind} | (
            {command.rest} if command.rest else set())
        for kind in sorted(kinds):
            lines.append(f"complete -c stepbuild -n {condition} {_fish_values(kind)}")
        for word in (w for w in command.positionals if w.choices):
            lines.append(f"complete -c stepbuild -n {condition} -x"
                         f" -a {_fish_quote(' '.join(word.choices))}")
    return "\n".join(lines) + "\n"


def _fish_options(condition: str, options: tuple[Option, ...]) -> list[str]:
    lines = []
    for option in options:
        names = " ".join(f"-s {n[1:]}" if len(n) == 2 else f"-l {n[2:]}" for n in option.names)
        value = ""
        if option.takes_value:
            value = (f" -x -a {_fish_quote(' '.join(option.choices))}" if option.choices
                     else " " + _fish_values(option.kind) if option.kind else " -x")
        lines.append(f"complete -c stepbuild -n {condition} {names}{value}"
                     f" -d {_fish_quote(option.help)}")
    return lines


def _fish_values(kind: str) -> str:
    return {"file": "-r -F", "dir": "-x -a '(__fish_complete_directories)'",
            "image": "-x -a '(__stepbuild_images)'"}.get(kind, "-x")


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
