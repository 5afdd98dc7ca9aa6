"""The command line: epfiot plan | apply | delete | get | watch | serve | events | schema | explain
| completion | version.

Exit codes: 0 success; 1 failure; 2 usage or manifest errors. plan --detailed-exitcode, as terraform plan:
0 no changes, 2 changes, 1 any error, and 3 when resources only wait (nothing to apply, the host differs).

One module per command, imported only when that command runs: start-up time is part of every apply. The
parser and the dispatch are in epfiot.cli.parser; what several commands share is in epfiot.cli.common.
"""

from epfiot.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
