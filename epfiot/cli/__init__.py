"""The command line: epfiot plan | apply | delete | get | watch | serve | events | schema.

Exit codes: 0 success; 1 failure (or errors, for plan --detailed-exitcode); 2 usage or manifest errors, and
changes present for plan --detailed-exitcode (as terraform plan does).

One module per command, imported only when that command runs: start-up time is part of every apply. The
parser and the dispatch are in epfiot.cli.parser; what several commands share is in epfiot.cli.common.
"""

from epfiot.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
