"""``torchrun`` that hands everything after the training script to the script (pytorch/pytorch#120601).

Stock torchrun parses its whole command line with argparse, which resolves abbreviations over every token, the
training script's own options included: ``torchrun train/main.py --r 0.5`` stops with "ambiguous option: --r
could match --rdzv-backend, ..., --role, --run-path, --redirects" before the script starts. This entry point
takes the approach of the upstream fix (pytorch/pytorch#196064): it finds where the training script starts,
parses only the options before it with torch's own parser and launches with torch's own launcher, so torchrun's
options work as they always did. tokred installs it as its environment's ``torchrun`` console script; nothing
of torch is patched. ``python -m tokred.launch`` is the same command.
"""

import argparse
import sys
from collections.abc import Sequence

from torch.distributed import run as torch_run
from torch.distributed.elastic.multiprocessing.errors import record


def values_taken(token: str, parser: argparse.ArgumentParser) -> int:
    """How many of the following tokens the option ``token`` takes as its value (0 or 1).

    ``--name=value`` and ``-xVALUE`` carry their value; ``--name`` may be an unambiguous abbreviation, as
    argparse allows. An unknown or ambiguous option takes none: torch's parser then reports it.
    """
    actions = parser._option_string_actions  # option string → action (argparse keeps no public map)
    if token.startswith("--"):
        if "=" in token:
            return 0
        matches = {id(a): a for name, a in actions.items() if name.startswith(token) and name.startswith("--")}
        action = actions.get(token) or (next(iter(matches.values())) if len(matches) == 1 else None)
        return int(action is not None and action.nargs != 0)
    for i, char in enumerate(token[1:], start=1):  # -m, -r VALUE, -rVALUE, or flags joined: -m -r VALUE as -mr
        action = actions.get("-" + char)
        if action is None:
            return 0
        if action.nargs != 0:
            return int(i == len(token) - 1)
    return 0


def script_index(argv: Sequence[str], parser: argparse.ArgumentParser) -> int | None:
    """The index in ``argv`` of the training script (the module with -m, the program with --no-python): the
    first token that is neither an option of ``parser`` nor the value of one, or the token after ``--``. None
    when there is none (``--help``, or a command without a script)."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return i + 1 if i + 1 < len(argv) else None
        if not token.startswith("-") or token == "-":
            return i
        i += 1 + values_taken(token, parser)
    return None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """torchrun's options, parsed by torch's parser from the tokens up to the training script; every token after
    the script is the script's own (``training_script_args``), whatever it looks like."""
    parser = torch_run.get_args_parser()
    start = script_index(argv, parser)
    if start is None:
        return parser.parse_args(list(argv))
    args = parser.parse_args(list(argv[: start + 1]))
    args.training_script_args = list(argv[start + 1 :])
    return args


@record
def main(argv: Sequence[str] | None = None) -> None:
    """The ``torchrun`` console script: ``torchrun [torchrun options] SCRIPT [script options]``."""
    torch_run.run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
